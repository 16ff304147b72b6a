"""Files the package ships: prompt templates and small data files (example configs).

They live in the repository's top-level prompts/ and data/ folders. `autointerp/_bundled/` holds symlinks
to both, so a checkout reads them in place and a built wheel (package data) carries them as plain files
inside the package: one path works for an editable install, a wheel, and a notebook.
"""

from __future__ import annotations

from pathlib import Path

from autointerp.errors import AutointerpError

BUNDLED = Path(__file__).resolve().parent / "_bundled"
PROMPTS_DIR = (BUNDLED / "prompts").resolve()
DATA_DIR = (BUNDLED / "data").resolve()


def data_file(name: str) -> Path:
    """A shipped data file by name, e.g. `data_file("demo.toml")` (the demo's job configuration)."""
    path = DATA_DIR / name
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in DATA_DIR.glob("*"))) or "none"
        raise AutointerpError(f"no shipped data file {name!r}; shipped: {shipped}")
    return path
