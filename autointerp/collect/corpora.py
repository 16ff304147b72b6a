"""Text corpora as a deterministic stream of (document_id, text), read through `datasets`.

Specs: `stdlib-docs` (built in, offline), a local `.txt` (one document per paragraph), `.jsonl`/`.json` or
`.parquet` file (one document per row, text in `text_column`), or `hub:NAME[:split]` (online only).
Document ids are positions in that stream, so a resumed collection can skip to where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import itertools
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from autointerp.collect.hub import require_hub
from autointerp.errors import AutointerpError

STDLIB_DOCS = "stdlib-docs"
HUB_PREFIX = "hub:"

_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Importing these has side effects (opens a browser, prints, needs a display) or pulls whole test suites.
_STDLIB_SKIP = {
    "antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "test", "lib2to3", "ensurepip",
    "venv", "pydoc_data", "__main__",
}


def iter_documents(spec: str, *, text_column: str = "text", start: int = 0) -> Iterator[tuple[int, str]]:
    """Yield (document_id, text) from document `start` on; empty documents are skipped but keep their ids."""
    if spec == STDLIB_DOCS:
        texts: Iterable[str] = stdlib_docs()
    elif spec.startswith(HUB_PREFIX):
        texts = _hub_texts(spec[len(HUB_PREFIX):], text_column)
    else:
        texts = _file_texts(spec, text_column)
    for doc_id, text in enumerate(itertools.islice(texts, start, None), start=start):
        if text.strip():
            yield doc_id, text


@functools.lru_cache(maxsize=1)
def stdlib_docs() -> tuple[str, ...]:
    """The standard library's documentation: every pydoc topic, then one document per stdlib module.

    A module's document is its docstring followed by the docstrings of its public classes and functions
    (`inspect.getdoc`). Order is by topic name, then module name, then member name.
    """
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn on import and on attribute access
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in _STDLIB_SKIP:
                continue
            text = _module_doc(name)
            if text:
                docs.append(text)
    return tuple(docs)


def _module_doc(name: str) -> str:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            module = importlib.import_module(name)
        except Exception:  # platform-specific modules (winreg, msvcrt...) and optional C extensions
            return ""
    parts = [inspect.getdoc(module) or ""]
    for member_name, member in sorted(vars(module).items()):
        if member_name.startswith("_") or getattr(member, "__module__", None) != name:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            parts.append(inspect.getdoc(member) or "")
    return "\n\n".join(p for p in parts if p)


def _file_texts(spec: str, text_column: str) -> Iterator[str]:
    path = Path(spec).expanduser()
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise AutointerpError(
            f"unknown dataset {spec!r}: use {STDLIB_DOCS}, hub:NAME[:split], or a local file ending in "
            f"{', '.join(_BUILDERS)}"
        )
    if not path.is_file():
        raise AutointerpError(f"dataset file {path} does not exist")
    import datasets

    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    column = "text" if builder == "text" else text_column
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
        yield from _column(dataset, column, str(path))
    except AutointerpError:
        raise
    except Exception as exc:
        raise AutointerpError(f"cannot read {path} as {builder}: {exc}") from None


def _hub_texts(name_split: str, text_column: str) -> Iterator[str]:
    name, _, split = name_split.partition(":")
    if not name:
        raise AutointerpError("hub dataset spec is hub:NAME[:split], e.g. hub:roneneldan/TinyStories:train")
    require_hub(f"dataset {name!r}", f"Use `dataset` {STDLIB_DOCS} or a local .txt/.jsonl/.parquet file")
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split or "train", streaming=True)
        yield from _column(dataset, text_column, f"hub:{name}")
    except AutointerpError:
        raise
    except Exception as exc:
        raise AutointerpError(
            f"cannot load dataset {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Use `dataset` {STDLIB_DOCS} or a local .txt/.jsonl/.parquet file"
        ) from None


def _column(rows: Iterable[dict], column: str, where: str) -> Iterator[str]:
    for row in rows:
        if column not in row:
            raise AutointerpError(
                f"{where} has no column {column!r}; its columns are {sorted(row)}: set `text_column`"
            )
        value = row[column]
        if value is not None and not isinstance(value, str):
            raise AutointerpError(
                f"column {column!r} of {where} holds {type(value).__name__} values, not text: set `text_column`"
            )
        yield value or ""
