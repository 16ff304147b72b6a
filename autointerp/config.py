"""Typed configuration with every default in one place; loaded from TOML files or flags.

The classes are pydantic dataclasses: attribute access, `dataclasses.replace` and `asdict` work as for
plain dataclasses, and every construction (from a file, from flags or in code) is validated here, so a
wrong type, an out-of-range number or an unknown key is one `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from autointerp.errors import AutointerpError

T = TypeVar("T")

_FORBID_EXTRA = ConfigDict(extra="forbid")

Count = Annotated[int, Field(ge=0, strict=True)]
AtLeastOne = Annotated[int, Field(ge=1, strict=True)]
Switch = Annotated[bool, Field(strict=True)]  # true or false, not "yes" or 1
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class ConfigError(AutointerpError):
    """A configuration value of the wrong type or range, or a key that does not exist."""


def _config_class(cls: type[T]) -> type[T]:
    """A frozen pydantic dataclass whose constructor (and so `dataclasses.replace`) raises ConfigError."""
    cls = dataclass(frozen=True, config=_FORBID_EXTRA)(cls)
    init = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as exc:
            raise ConfigError(describe(exc, cls.__name__)) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_config_class
class SamplingConfig:
    n_train_top: AtLeastOne = 10
    n_train_quantile: Count = 10
    n_train_hard_negatives: Count = 5  # shown only by the contrastive prompt
    n_quantiles: AtLeastOne = 5
    n_valid_positives: Count = 10
    n_valid_random_negatives: Count = 5
    n_valid_hard_negatives: Count = 5
    n_test_positives: AtLeastOne = 20
    n_test_random_negatives: Count = 10
    n_test_hard_negatives: Count = 10
    n_characteristic_tokens: Count = 5
    min_active_contexts: AtLeastOne = 8  # fewer and the feature is reported as too sparse to label
    seed: Count = 0
    # The share of the valid and test positives taken from the top-ranked contexts (dealt by rank between
    # train, valid and test), so that a score checks the label against the feature's strongest behaviour;
    # 0.5 matches train (n_train_top of n_train_top + n_train_quantile), so train and test hold the same mix.
    top_share: Share = 0.5
    # Dense features: when whole silent contexts are too few, negatives are windows of this many tokens
    # inside active contexts where every activation is at most near_zero x the feature's max.
    negative_window: Count = 16
    near_zero: Share = 0.05


def config_hash(*parts: Any) -> str:
    """A stable short hash of configuration objects (dataclasses, dicts, strings)."""
    payload = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build a (pydantic or plain) dataclass from a dict, validating every field's type; an unknown key or a
    bad value is one ConfigError naming the key and what it allows."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of keys, got {data!r}")
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed keys: {', '.join(known)}")
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe(exc, where)) from None


def describe(exc: pydantic.ValidationError, where: str) -> str:
    return f"bad configuration in {where}: " + "; ".join(problems(exc))


def problems(exc: pydantic.ValidationError, prefix: str = "") -> list[str]:
    """A pydantic error as one phrase per problem: `key = value: what is wrong`."""
    out = []
    for err in exc.errors(include_url=False):
        key = prefix + ".".join(str(part) for part in err["loc"])
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            out.append(f"unknown key {key!r}")
        elif err["type"] in ("value_error", "missing"):
            out.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            out.append(f"{key} = {err['input']!r}: {err['msg']}")
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AutointerpError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise AutointerpError(f"config file {path} is not valid TOML: {exc}") from None


@_config_class
class JobConfig:
    """A batch labeling job. A TOML file holds these keys at top level, plus [sampling] and
    [scorer_options.<scorer>] tables; command-line flags override the file."""

    source: str = ""
    features: str = "auto:20"  # "0-99" | "1,5,9" | "auto:N" (N features across density strata)
    explainer: str = "local"  # "local" | "openai:<model>" | "anthropic:<model>"
    simulator: str | None = None  # model for the LLM scorers; None means the explainer model
    scorers: tuple[str, ...] = ("detection", "embedding")
    prompt: str = "highlight"  # highlight | pairs | contrastive | output | combined (the last two: output evidence)
    k: AtLeastOne = 1  # candidate labels per feature; the best on the valid split is kept
    evidence: Switch = False  # add the train split's token counts (autointerp.evidence) to the explainer prompt
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    scorer_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    concurrency: AtLeastOne = 8  # features in flight, and LLM requests in flight for remote models
    base_url: str | None = None
    rpm: Annotated[float, Field(gt=0, strict=True)] | None = None  # requests / tokens per minute allowed (None: unlimited)
    tpm: Annotated[float, Field(gt=0, strict=True)] | None = None
    prices: str | None = None  # TOML file overriding the built-in price table
    batch: Switch = False  # send the LLM requests as provider batches (openai, anthropic): half price, within 24 h
    ray: str | None = None  # run the explain and score stages on a Ray cluster: "auto" (a local one) or its address
    ray_workers: AtLeastOne | None = None  # Ray workers, `concurrency` features each (default: one per CPU of the cluster)

    @pydantic.field_validator("scorers")
    @classmethod
    def _known_scorers(cls, scorers: tuple[str, ...]) -> tuple[str, ...]:
        from autointerp.scoring import SCORERS

        if not scorers:
            raise ValueError(f"choose at least one scorer of {', '.join(SCORERS)}")
        unknown = sorted(set(scorers) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; allowed: {', '.join(SCORERS)}")
        return scorers

    @pydantic.field_validator("scorer_options")
    @classmethod
    def _known_options(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: scorer_options(name, opts) for name, opts in options.items()}


def scorer_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check one scorer's options against its constructor's keyword arguments (names, types, ranges)."""
    from autointerp.scoring import SCORERS

    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r} in scorer_options; allowed: {', '.join(SCORERS)}")
    params = {
        p.name: (p.annotation, p.default)
        for p in inspect.signature(SCORERS[name].__init__, eval_str=True).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {name} scorer; allowed: {', '.join(params)}")
    model = pydantic.create_model(f"{name}_options", __config__=ConfigDict(extra="forbid"), **params)
    try:
        checked = model.model_validate(options)
    except pydantic.ValidationError as exc:
        raise ValueError("; ".join(problems(exc, f"{name}."))) from None
    return {key: getattr(checked, key) for key in options}


def load_job_config(path: str | Path | None = None, **overrides: Any) -> JobConfig:
    """A JobConfig from an optional TOML file, then the overrides that are not None (command-line flags).

    `seed` overrides the sampling seed."""
    data = load_toml(path) if path else {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "seed":
            data["sampling"] = {**data.get("sampling", {}), "seed": value}
        else:
            data[key] = value
    return from_dict(JobConfig, data, where=str(path) if path else "job settings")
