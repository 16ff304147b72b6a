"""Typed configuration with every default in one place; loaded from TOML files or flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
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
