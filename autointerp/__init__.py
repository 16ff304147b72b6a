"""autointerp: automated interpretability labeling, scoring and a searchable feature catalog.

The names below are the Python API (see the README's notebook example). They are imported on first use,
so `import autointerp` and the command line start without loading DuckDB, torch or the models.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutointerpError": "autointerp.errors",
    "ConfigError": "autointerp.config",
    "JobConfig": "autointerp.config",
    "SamplingConfig": "autointerp.config",
    "Store": "autointerp.store.db",
    "CollectConfig": "autointerp.collect.collector",
    "import_parquet": "autointerp.store.importing",
    "sample": "autointerp.sampling",
    "sample_many": "autointerp.sampling",
    "make_llm": "autointerp.llm",
    "make_scorer": "autointerp.scoring",
    "import_labels": "autointerp.exchange",
    "data_file": "autointerp.resources",
    "compute_effects": "autointerp.output_evidence",
    **{
        name: "autointerp.api"
        for name in (
            "collect_activations", "list_sources", "list_features", "job_config", "label_features", "score_label", "search_labels",
            "list_runs", "export_labels", "to_arrow", "to_pandas",
        )
    },
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autointerp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
