"""Typed configuration with every default in one place; loaded from TOML files or flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from autointerp.errors import AutointerpError

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingConfig:
    n_train_top: int = 10
    n_train_quantile: int = 10
    n_train_hard_negatives: int = 5  # shown only by the contrastive prompt
    n_quantiles: int = 5
    n_valid_positives: int = 10
    n_valid_random_negatives: int = 5
    n_valid_hard_negatives: int = 5
    n_test_positives: int = 20
    n_test_random_negatives: int = 10
    n_test_hard_negatives: int = 10
    n_characteristic_tokens: int = 5
    min_active_contexts: int = 8  # fewer and the feature is reported as too sparse to label
    seed: int = 0


def config_hash(*parts: Any) -> str:
    """A stable short hash of configuration objects (dataclasses, dicts, strings)."""
    payload = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a dict, rejecting unknown keys with a message that lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise AutointerpError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")
    return cls(**data)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AutointerpError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise AutointerpError(f"config file {path} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class JobConfig:
    """A batch labeling job. A TOML file holds these keys at top level, plus [sampling] and
    [scorer_options.<scorer>] tables; command-line flags override the file."""

    source: str = ""
    features: str = "auto:20"  # "0-99" | "1,5,9" | "auto:N" (N features across density strata)
    explainer: str = "local"  # "local" | "openai:<model>" | "anthropic:<model>"
    simulator: str | None = None  # model for the LLM scorers; None means the explainer model
    scorers: tuple[str, ...] = ("detection", "embedding")
    prompt: str = "highlight"  # highlight | pairs | contrastive
    k: int = 1  # candidate labels per feature; the best on the valid split is kept
    evidence: bool = False  # add the train split's token counts (autointerp.evidence) to the explainer prompt
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    concurrency: int = 8  # features in flight, and LLM requests in flight for remote models
    base_url: str | None = None
    rpm: float | None = None  # requests / tokens per minute allowed by the provider (None: unlimited)
    tpm: float | None = None
    prices: str | None = None  # TOML file overriding the built-in price table


_JOB_TYPES = {
    "source": str, "features": str, "explainer": str, "simulator": str, "prompt": str, "base_url": str, "prices": str,
    "k": int, "concurrency": int, "evidence": bool, "rpm": (int, float), "tpm": (int, float), "scorers": (list, tuple), "scorer_options": dict,
}


def job_config_from_dict(data: dict[str, Any], where: str = "job config") -> JobConfig:
    data = dict(data)
    for key, kinds in _JOB_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool)):
            raise AutointerpError(f"{key} in {where} has the wrong type ({value!r}); see `autointerp label --help`")
    if "sampling" in data:
        data["sampling"] = from_dict(SamplingConfig, data["sampling"], f"{where} [sampling]")
    if "scorers" in data:
        data["scorers"] = tuple(data["scorers"])
    return from_dict(JobConfig, data, where)


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
    return job_config_from_dict(data, where=str(path) if path else "job settings")
