"""Derived index files beside a store, written so that a reader never sees a half-written set.

Layout: `<folder>/manifest.json` names the current generation (a subfolder) and, per file, its size and a
digest. A writer fills a new generation, then replaces the manifest in one rename, then removes older
generations. The digest covers the file's first and last MiB and SAMPLES blocks spread over it: it catches
truncation, appended bytes and overwritten blocks without reading a multi-GB index on every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.json"
FORMAT = 2  # 2: vectors as a memory-mapped float16 file beside the fast-scan codes
EDGE = 1 << 20
SAMPLES, SAMPLE = 64, 1 << 16


def digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= 2 * EDGE + SAMPLES * SAMPLE:
            h.update(f.read())
        else:
            for offset in [0, size - EDGE]:
                f.seek(offset)
                h.update(f.read(EDGE))
            for i in range(SAMPLES):
                f.seek(EDGE + (size - 2 * EDGE - SAMPLE) * i // SAMPLES)
                h.update(f.read(SAMPLE))
    return h.hexdigest()


def write(folder: Path, manifest: dict, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write one generation: each writer writes its file; then point the manifest at it. Returns its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    generation = f"gen-{time.time_ns()}-{os.getpid()}"
    target = folder / generation
    target.mkdir()
    try:
        files = {}
        for name, write_file in writers.items():
            write_file(target / name)
            files[name] = {"size": (target / name).stat().st_size, "digest": digest(target / name)}
        staging = folder / f"{MANIFEST}.{generation}"
        staging.write_text(json.dumps({**manifest, "format": FORMAT, "generation": generation, "files": files}))
        os.replace(staging, folder / MANIFEST)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for old in folder.glob("gen-*"):
        if old.name != generation:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read(folder: Path) -> tuple[dict, dict[str, Path]] | None:
    """(manifest, path by file name) of the current generation; None when there is none. A file whose size
    or digest differs from the manifest's raises ValueError."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"index format {manifest.get('format')!r}, not {FORMAT}")
    files = {}
    for name, expected in manifest["files"].items():
        path = folder / manifest["generation"] / name
        if path.stat().st_size != expected["size"] or digest(path) != expected["digest"]:
            raise ValueError(f"{path} is damaged (size or digest differs from the manifest)")
        files[name] = path
    return manifest, files
