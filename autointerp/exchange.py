"""Labels in and out of a catalog: CSV and Parquet (every label, its provenance and scores) and a
Neuronpedia-compatible explanations file (JSONL).

Table format, one row per label: source, model, layer, hookpoint, feature, explanation_id, label, author,
explainer_model, prompt_name, prompt_hash, run_id, config_hash, seed, sampling_config (JSON), details (JSON),
created_at, review_state, is_best, the headline score (headline_scorer, headline_metric, headline_value,
headline_ci_low, headline_ci_high, headline_n) and every score as a JSON list (scores).

Neuronpedia format: one JSON object per line with the fields of Neuronpedia's Explanation records:
modelId (the subject model), layer (Neuronpedia's source id: here the source name), index (feature, as a
string), description (the label), explanationModelName, typeName (the prompt), authorId, createdAt, and
notes (a JSON string with the provenance and scores that Neuronpedia has no field for).

Importing writes each label as a new explanation with author "import"; what the file said about its origin
(author, run, ids, review state, notes) is kept in details.imported_from, the scores are stored again, and
the run that did the import is recorded in `runs` (kind "import"). A label already present for the same
source and feature is skipped, so importing a file twice adds nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from autointerp.catalog import Label, best_labels, load_labels, resolve_metric, write_label
from autointerp.embeddings import embed_texts
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, Score
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp.store.activations import get_source, list_sources
from autointerp.store.jobs import create_run, update_run

FORMATS = ("csv", "parquet", "neuronpedia")
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "neuronpedia"}
CHUNK = 5000
IMPORT_BATCH = 500


def format_of(path: str | Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise AutointerpError(f"unknown label file format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise AutointerpError(f"cannot tell the format of {path} from its name: use .csv, .parquet or .jsonl, or pass --format")
    return found


def _labels(con: duckdb.DuckDBPyConnection, source: str | None, best_only: bool) -> Iterator[Label]:
    if best_only:
        yield from best_labels(con, source)
        return
    ids = q.explanation_ids(con, get_source(con, source).source_id if source else None)
    for start in range(0, len(ids), CHUNK):
        yield from load_labels(con, ids[start : start + CHUNK])


def _score_dict(s: Score) -> dict[str, Any]:
    out = dataclasses.asdict(s)
    out.pop("items")  # judged items live in their own table; a label file carries the scores
    return out


def _table_row(label: Label, source, headline: tuple[str, str] | None, best_ids: set[int]) -> dict[str, Any]:
    top = label.score(*headline) if headline else None
    return {
        "source": label.source,
        "model": source.model,
        "layer": source.layer,
        "hookpoint": source.hookpoint,
        "feature": label.feature,
        "explanation_id": label.explanation_id,
        "label": label.label,
        "author": label.author,
        "explainer_model": label.explainer_model,
        "prompt_name": label.prompt_name,
        "prompt_hash": label.prompt_hash,
        "run_id": label.run_id,
        "config_hash": label.config_hash,
        "seed": label.seed,
        "sampling_config": json.dumps(label.sampling_config) if label.sampling_config is not None else None,
        "details": json.dumps(label.details, default=str),
        "created_at": str(label.created_at),
        "review_state": label.review_state,
        "is_best": label.explanation_id in best_ids,
        "headline_scorer": headline[0] if top else None,
        "headline_metric": headline[1] if top else None,
        "headline_value": top.value if top else None,
        "headline_ci_low": top.ci_low if top else None,
        "headline_ci_high": top.ci_high if top else None,
        "headline_n": top.n if top else None,
        "scores": json.dumps([_score_dict(s) for s in label.scores], default=str),
    }


def _neuronpedia_row(label: Label, source) -> dict[str, Any]:
    notes = {
        "source": label.source,
        "explanation_id": label.explanation_id,
        "author": label.author,
        "prompt_hash": label.prompt_hash,
        "run_id": label.run_id,
        "config_hash": label.config_hash,
        "seed": label.seed,
        "review_state": label.review_state,
        "scores": [_score_dict(s) for s in label.scores],
    }
    return {
        "modelId": source.model or label.source,
        "layer": label.source,
        "index": str(label.feature),
        "description": label.label,
        "explanationModelName": label.explainer_model,
        "typeName": label.prompt_name,
        "authorId": f"autointerp:{label.author}",
        "createdAt": label.created_at.isoformat() if isinstance(label.created_at, datetime) else str(label.created_at),
        "notes": json.dumps(notes, default=str),
    }


def export_labels(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    fmt: str | None = None,
    *,
    source: str | None = None,
    best_only: bool = False,
) -> int:
    """Write labels (all, or each feature's best) to a CSV, Parquet or Neuronpedia JSONL file; return the count."""
    fmt = format_of(path, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = {s.name: s for s in list_sources(con)}
    n = 0
    if fmt == "neuronpedia":
        with path.open("w", encoding="utf-8") as out:
            for label in _labels(con, source, best_only):
                out.write(json.dumps(_neuronpedia_row(label, sources[label.source]), ensure_ascii=False) + "\n")
                n += 1
        return n
    headline = resolve_metric(con)
    best_ids = {b.explanation_id for b in best_labels(con, source)}
    rows = [_table_row(label, sources[label.source], headline, best_ids) for label in _labels(con, source, best_only)]
    table = pa.Table.from_pylist(rows, schema=_TABLE_SCHEMA)
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return len(rows)


_TABLE_SCHEMA = pa.schema(
    [
        ("source", pa.string()), ("model", pa.string()), ("layer", pa.int32()), ("hookpoint", pa.string()),
        ("feature", pa.int32()), ("explanation_id", pa.int64()), ("label", pa.string()), ("author", pa.string()),
        ("explainer_model", pa.string()), ("prompt_name", pa.string()), ("prompt_hash", pa.string()),
        ("run_id", pa.string()), ("config_hash", pa.string()), ("seed", pa.int64()), ("sampling_config", pa.string()),
        ("details", pa.string()), ("created_at", pa.string()), ("review_state", pa.string()), ("is_best", pa.bool_()),
        ("headline_scorer", pa.string()), ("headline_metric", pa.string()), ("headline_value", pa.float64()),
        ("headline_ci_low", pa.float64()), ("headline_ci_high", pa.float64()), ("headline_n", pa.int64()),
        ("scores", pa.string()),
    ]
)


@dataclass
class ImportReport:
    run_id: str
    n_read: int
    n_imported: int
    n_skipped: int  # already in the catalog
    seconds: float


@dataclass
class _Incoming:
    source: str
    explanation: Explanation
    scores: list[Score]
    sampling_config: dict | None
    seed: int | None


def _read_table_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt == "csv":
            types = {f.name: f.type for f in _TABLE_SCHEMA}
            options = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
            table = pa_csv.read_csv(path, convert_options=options)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise AutointerpError(f"cannot read {path} as {fmt}: {exc}") from None
    missing = {"source", "feature", "label"} - set(table.column_names)
    if missing:
        raise AutointerpError(f"{path} lacks column(s) {sorted(missing)}: export labels with `autointerp export` for the format")
    return table.to_pylist()


def _json_field(value: Any, where: str) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise AutointerpError(f"{where} is not valid JSON") from None


def _from_table_row(row: dict[str, Any], path: Path, line: int, source: str | None) -> _Incoming:
    where = f"{path} row {line}"
    scores = []
    for s in _json_field(row.get("scores"), f"{where} column scores") or []:
        try:
            scores.append(Score(**s))
        except TypeError:
            raise AutointerpError(f"{where}: a score lacks scorer, metric, value, ci_low, ci_high or n") from None
    origin = {k: row.get(k) for k in ("source", "explanation_id", "author", "run_id", "config_hash", "created_at", "review_state")}
    details = _json_field(row.get("details"), f"{where} column details") or {}
    return _Incoming(
        source=source or str(row["source"]),
        explanation=Explanation(
            source=source or str(row["source"]),
            feature=int(row["feature"]),
            label=str(row["label"]),
            author="import",
            explainer_model=row.get("explainer_model"),
            prompt_name=row.get("prompt_name"),
            prompt_hash=row.get("prompt_hash"),
            details={**details, "imported_from": {"file": path.name, "format": "table", **origin}},
        ),
        scores=scores,
        sampling_config=_json_field(row.get("sampling_config"), f"{where} column sampling_config"),
        seed=row.get("seed"),
    )


def _read_neuronpedia(path: Path, source: str | None) -> list[_Incoming]:
    out = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                feature = int(rec["index"])
                description = str(rec["description"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise AutointerpError(
                    f"{path} line {number} is not a Neuronpedia explanation (JSON with modelId, layer, index, description)"
                ) from None
            name = source or rec.get("layer")
            if not name:
                raise AutointerpError(f"{path} line {number} has no layer: pass --source to say which source it labels")
            origin = {k: rec.get(k) for k in ("id", "modelId", "layer", "authorId", "typeName", "notes", "createdAt")}
            out.append(
                _Incoming(
                    source=name,
                    explanation=Explanation(
                        source=name,
                        feature=feature,
                        label=description,
                        author="import",
                        explainer_model=rec.get("explanationModelName"),
                        prompt_name=rec.get("typeName"),
                        details={"imported_from": {"file": path.name, "format": "neuronpedia", **origin}},
                    ),
                    scores=[],
                    sampling_config=None,
                    seed=None,
                )
            )
    return out


def import_labels(store: Store, path: str | Path, fmt: str | None = None, *, source: str | None = None) -> ImportReport:
    """Add the labels of a CSV, Parquet or Neuronpedia JSONL file to the catalog (see the module docstring)."""
    start = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise AutointerpError(f"no file {path}")
    fmt = format_of(path, fmt)
    if fmt == "neuronpedia":
        incoming = _read_neuronpedia(path, source)
    else:
        incoming = [_from_table_row(r, path, i, source) for i, r in enumerate(_read_table_rows(path, fmt), start=1)]
    run_id = f"import-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with store.writing() as con:
        seen: dict[str, set[tuple[int, str]]] = {}
        for name in sorted({i.source for i in incoming}):
            sid = get_source(con, name).source_id  # every source must exist before anything is written
            seen[name] = q.existing_labels(con, sid)
        create_run(con, run_id, "import", {"file": str(path), "format": fmt, "source": source}, None, len(incoming))
    fresh = []
    for item in incoming:
        key = (item.explanation.feature, item.explanation.label)
        if key not in seen[item.source]:
            seen[item.source].add(key)
            fresh.append(item)
    for begin in range(0, len(fresh), IMPORT_BATCH):
        batch = fresh[begin : begin + IMPORT_BATCH]
        vectors = embed_texts([i.explanation.label for i in batch])
        with store.writing() as con:
            for item, vector in zip(batch, vectors):
                write_label(
                    con, item.explanation, item.scores, run_id=run_id, config_hash=None,
                    sampling_config=item.sampling_config, seed=item.seed, embedding=vector,
                )
            update_run(con, run_id, n_done=begin + len(batch))
    with store.writing() as con:
        update_run(con, run_id, status="done", n_done=len(fresh), n_skipped=len(incoming) - len(fresh), ended=True)
    return ImportReport(run_id, len(incoming), len(fresh), len(incoming) - len(fresh), time.perf_counter() - start)
