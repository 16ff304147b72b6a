"""Labels in and out of a catalog: CSV and Parquet (every label, its provenance and scores) and a
Neuronpedia-compatible explanations file (JSONL).

Table format, one row per label: source, model, layer, hookpoint, feature, explanation_id, label,
label_sha256 (of the text its scores were measured on), author, explainer_model, prompt_name, prompt_hash,
run_id, config_hash, seed, sampling_config (JSON), details (JSON), created_at, review_state, is_best,
best_reason (why it is best, on best rows), the headline score (headline_scorer, headline_metric,
headline_value, headline_ci_low, headline_ci_high, headline_n: the reliable score its feature is ranked by,
else its own most preferred reliable score; see `autointerp.ranking`) and every score as a JSON list (scores).

Neuronpedia format: one JSON object per line with the fields of Neuronpedia's Explanation records, as
`neuronpedia.np_explanation.Explanation.from_np_db_json` reads them: modelId (the subject model, or the id
given), source and layer (Neuronpedia's source id: the source name, or the id given), index (feature, as a
string), description (the label), explanationModelName, typeName (the prompt), authorId, createdAt, and
notes (a JSON string with the provenance and scores that Neuronpedia has no field for). Where the feature's
output evidence is stored, its logit lens goes in topLogits / bottomLogits ({token, value} lists, the names and
shape of Neuronpedia's feature upload and of `neuronpedia.np_feature.Logit`), and the amplification changes
and how both were computed in notes.output_evidence.

Importing checks every row first (source known, feature an integer within the source's width, label not
empty) and stops at the first bad one, naming it, before anything is written. Each label becomes a new
explanation with author "import"; what the file said about its origin (author, run, ids, review state,
notes) is kept in details.imported_from. Its scores are the file's claims: stored with `imported` set, shown
but never used to rank (`autointerp.ranking`), and dropped when label_sha256 shows the label text was
changed after scoring. The run that did the import is recorded in `runs` (kind "import"). A label already
present for the same source and feature is skipped, so importing a file twice adds nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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

from autointerp import ranking
from autointerp.catalog import Label, NewLabel, best_labels, load_labels, write_labels
from autointerp.embeddings import embed_texts
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, OutputEvidence, Score, TokenEffect
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp.store.activations import SourceInfo, get_source, list_sources
from autointerp.store.jobs import create_run, update_run
from autointerp.store.output_evidence_queries import load_output_evidence

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


def _labels(con: duckdb.DuckDBPyConnection, source: str | None, best: list[Label] | None) -> Iterator[Label]:
    """Every label (best=None), or just the best ones given."""
    if best is not None:
        yield from best
        return
    ids = q.explanation_ids(con, get_source(con, source).source_id if source else None)
    for start in range(0, len(ids), CHUNK):
        yield from load_labels(con, ids[start : start + CHUNK])


def label_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _score_dict(s: Score) -> dict[str, Any]:
    out = dataclasses.asdict(s)
    out.pop("items")  # judged items live in their own table; a label file carries the scores
    return out


def _headline(label: Label, ranked_by: tuple[str, str] | None) -> Score | None:
    """The reliable score its feature is ranked by, else its own most preferred reliable score."""
    ranked = label.score(*ranked_by) if ranked_by else None
    return ranked if ranked is not None and not ranked.unreliable else ranking.headline(label.scores)


def _table_row(label: Label, source: SourceInfo, best: dict[tuple[str, int], Label]) -> dict[str, Any]:
    winner = best.get((label.source, label.feature))
    why = winner.why_best if winner else None
    top = _headline(label, why.ranked_by if why else None)
    is_best = winner is not None and winner.explanation_id == label.explanation_id
    return {
        "source": label.source,
        "model": source.model,
        "layer": source.layer,
        "hookpoint": source.hookpoint,
        "feature": label.feature,
        "explanation_id": label.explanation_id,
        "label": label.label,
        "label_sha256": label_sha256(label.label),
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
        "is_best": is_best,
        "best_reason": why.text if is_best and why else None,
        "headline_scorer": top.scorer if top else None,
        "headline_metric": top.metric if top else None,
        "headline_value": top.value if top else None,
        "headline_ci_low": top.ci_low if top else None,
        "headline_ci_high": top.ci_high if top else None,
        "headline_n": top.n if top else None,
        "scores": json.dumps([_score_dict(s) for s in label.scores], default=str),
    }


def _logits(effects: list[TokenEffect]) -> list[dict[str, Any]]:
    return [{"token": e.token, "value": e.value} for e in effects]


def _neuronpedia_row(
    label: Label, source: SourceInfo, model_id: str | None, source_id: str | None, output: OutputEvidence | None
) -> dict[str, Any]:
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
    logits: dict[str, Any] = {}
    if output is not None:
        notes["output_evidence"] = {"provenance": output.provenance}
        if output.logit_lens is not None:
            logits = {"topLogits": _logits(output.logit_lens.promoted), "bottomLogits": _logits(output.logit_lens.suppressed)}
        if output.amplification is not None:
            amp = output.amplification
            notes["output_evidence"]["amplification"] = {"promoted": _logits(amp.promoted), "suppressed": _logits(amp.suppressed)}
    np_source = source_id or label.source
    return {
        "modelId": model_id or source.model or label.source,
        "source": np_source,
        "layer": np_source,
        "index": str(label.feature),
        "description": label.label,
        "explanationModelName": label.explainer_model,
        "typeName": label.prompt_name,
        "authorId": f"autointerp:{label.author}",
        "createdAt": label.created_at.isoformat() if isinstance(label.created_at, datetime) else str(label.created_at),
        "notes": json.dumps(notes, default=str),
        **logits,
    }


def export_labels(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    fmt: str | None = None,
    *,
    source: str | None = None,
    best_only: bool = False,
    neuronpedia_model: str | None = None,
    neuronpedia_source: str | None = None,
) -> int:
    """Write labels (all, or each feature's best) to a CSV, Parquet or Neuronpedia JSONL file; return the count.

    neuronpedia_model / neuronpedia_source: the ids Neuronpedia knows the subject model and the source by
    (e.g. "gpt2-small", "6-res-jb"); a source id needs `source`, since it names one source."""
    fmt = format_of(path, fmt)
    if fmt != "neuronpedia" and (neuronpedia_model or neuronpedia_source):
        raise AutointerpError("Neuronpedia model and source ids apply to the Neuronpedia format (.jsonl) only")
    if neuronpedia_source and not source:
        raise AutointerpError("a Neuronpedia source id names one source: say which with --source")
    path = Path(path)
    sources = {s.name: s for s in list_sources(con)}
    best = best_labels(con, source) if best_only or fmt != "neuronpedia" else []
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = best if best_only else None
    if fmt == "neuronpedia":
        n = 0
        with path.open("w", encoding="utf-8") as out:
            for chunk in _chunks(_labels(con, source, chosen), CHUNK):
                output = _output_evidence(con, sources, chunk)
                for label in chunk:
                    row = _neuronpedia_row(
                        label, sources[label.source], neuronpedia_model, neuronpedia_source,
                        output.get((label.source, label.feature)),
                    )
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
        return n
    by_feature = {(b.source, b.feature): b for b in best}
    rows = [_table_row(label, sources[label.source], by_feature) for label in _labels(con, source, chosen)]
    table = pa.Table.from_pylist(rows, schema=_TABLE_SCHEMA)
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return len(rows)


def _chunks(labels: Iterator[Label], size: int) -> Iterator[list[Label]]:
    chunk: list[Label] = []
    for label in labels:
        chunk.append(label)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _output_evidence(
    con: duckdb.DuckDBPyConnection, sources: dict[str, SourceInfo], labels: list[Label]
) -> dict[tuple[str, int], OutputEvidence]:
    """The stored output evidence of the labels' features, by (source, feature)."""
    features: dict[str, set[int]] = {}
    for label in labels:
        features.setdefault(label.source, set()).add(label.feature)
    return {
        (name, feature): evidence
        for name, wanted in features.items()
        for feature, evidence in load_output_evidence(con, sources[name].source_id, name, sorted(wanted)).items()
    }


_TABLE_SCHEMA = pa.schema(
    [
        ("source", pa.string()), ("model", pa.string()), ("layer", pa.int32()), ("hookpoint", pa.string()),
        ("feature", pa.int32()), ("explanation_id", pa.int64()), ("label", pa.string()),
        ("label_sha256", pa.string()), ("author", pa.string()),
        ("explainer_model", pa.string()), ("prompt_name", pa.string()), ("prompt_hash", pa.string()),
        ("run_id", pa.string()), ("config_hash", pa.string()), ("seed", pa.int64()), ("sampling_config", pa.string()),
        ("details", pa.string()), ("created_at", pa.string()), ("review_state", pa.string()), ("is_best", pa.bool_()),
        ("best_reason", pa.string()),
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
    where: str  # the file and row it came from, for messages


def _read_table_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt == "csv":
            # feature as text: a bad value is reported with its row by _feature, not as an unreadable file
            types = {f.name: (pa.string() if f.name == "feature" else f.type) for f in _TABLE_SCHEMA}
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


def _feature(value: Any, where: str) -> int:
    """A feature number as the file gives it: an integer (or integral text), never negative."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None:
        raise AutointerpError(f"{where}: feature {str(value)!r} is not a whole number; fix the row and import again")
    if number < 0:
        raise AutointerpError(f"{where}: feature {number} is negative; features are numbered from 0")
    return number


def _label_text(value: Any, where: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise AutointerpError(f"{where}: the label is empty; give every row a label text or remove the row")
    return text


_SCORE_FIELDS = {f.name for f in dataclasses.fields(Score) if f.init} - {"items"}  # judged items stay home


def _imported_score(raw: Any, where: str) -> Score:
    """A score the file claims, marked imported."""
    if not isinstance(raw, dict):
        raise AutointerpError(f"{where}: a score is not an object with scorer, metric, value, ci_low, ci_high and n")
    fields = {k: v for k, v in raw.items() if k in _SCORE_FIELDS}
    try:
        score = Score(**{**fields, "imported": True})
        if not isinstance(score.n, int) or not isinstance(score.scorer, str) or not isinstance(score.metric, str):
            raise TypeError
    except TypeError:
        raise AutointerpError(
            f"{where}: a score lacks scorer, metric, value, ci_low, ci_high or n, or has a wrong type"
        ) from None
    return score


def _from_table_row(row: dict[str, Any], path: Path, line: int, source: str | None) -> _Incoming:
    where = f"{path} row {line}"
    feature = _feature(row.get("feature"), where)
    text = _label_text(row.get("label"), where)
    if not source and not row.get("source"):
        raise AutointerpError(f"{where} has no source: pass --source to say which source it labels")
    scores = [_imported_score(s, where) for s in _json_field(row.get("scores"), f"{where} column scores") or []]
    origin = {k: row.get(k) for k in ("source", "explanation_id", "author", "run_id", "config_hash", "created_at", "review_state")}
    scored_text = row.get("label_sha256")
    if scores and scored_text and scored_text != label_sha256(text):
        origin["scores_dropped"] = f"{len(scores)} scores: the label text changed after it was scored"
        scores = []
    details = _json_field(row.get("details"), f"{where} column details") or {}
    name = source or str(row["source"])
    return _Incoming(
        source=name,
        explanation=Explanation(
            source=name,
            feature=feature,
            label=text,
            author="import",
            explainer_model=row.get("explainer_model"),
            prompt_name=row.get("prompt_name"),
            prompt_hash=row.get("prompt_hash"),
            details={**details, "imported_from": {"file": path.name, "format": "table", **origin}},
        ),
        scores=scores,
        sampling_config=_json_field(row.get("sampling_config"), f"{where} column sampling_config"),
        seed=row.get("seed"),
        where=where,
    )


def _read_neuronpedia(path: Path, source: str | None) -> list[_Incoming]:
    out = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                rec = json.loads(line)
                index, description = rec["index"], rec["description"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise AutointerpError(
                    f"{where} is not a Neuronpedia explanation (JSON with modelId, source, index, description)"
                ) from None
            feature = _feature(index, where)
            text = _label_text(description, where)
            name = source or rec.get("source") or rec.get("layer")
            if not name:
                raise AutointerpError(f"{where} has no source: pass --source to say which source it labels")
            origin = {k: rec.get(k) for k in ("id", "modelId", "source", "layer", "authorId", "typeName", "notes", "createdAt")}
            out.append(
                _Incoming(
                    source=name,
                    explanation=Explanation(
                        source=name,
                        feature=feature,
                        label=text,
                        author="import",
                        explainer_model=rec.get("explanationModelName"),
                        prompt_name=rec.get("typeName"),
                        details={"imported_from": {"file": path.name, "format": "neuronpedia", **origin}},
                    ),
                    scores=[],
                    sampling_config=None,
                    seed=None,
                    where=where,
                )
            )
    return out


def _check_sources(con: duckdb.DuckDBPyConnection, incoming: list[_Incoming]) -> dict[str, set[tuple[int, str]]]:
    """Every row's source exists and its feature is within the source's width; return the labels present."""
    seen: dict[str, set[tuple[int, str]]] = {}
    widths: dict[str, int | None] = {}
    for item in incoming:
        if item.source not in widths:
            info = get_source(con, item.source)  # unknown source: the error lists the known ones
            widths[item.source] = info.width
            seen[item.source] = q.existing_labels(con, info.source_id)
        width = widths[item.source]
        if width is not None and item.explanation.feature >= width:
            raise AutointerpError(
                f"{item.where}: feature {item.explanation.feature} is outside source {item.source!r}, "
                f"which has {width} features (0 to {width - 1}); check the file's source and feature columns"
            )
    return seen


def import_labels(store: Store, path: str | Path, fmt: str | None = None, *, source: str | None = None) -> ImportReport:
    """Add the labels of a CSV, Parquet or Neuronpedia JSONL file to the catalog (see the module docstring).
    A bad row raises AutointerpError naming it, and nothing is written."""
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
        seen = _check_sources(con, incoming)
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
            write_labels(con, [
                NewLabel(item.explanation, item.scores, run_id, None, item.sampling_config, item.seed, vector)
                for item, vector in zip(batch, vectors)
            ])
            update_run(con, run_id, n_done=begin + len(batch))
    with store.writing() as con:
        update_run(con, run_id, status="done", n_done=len(fresh), n_skipped=len(incoming) - len(fresh), ended=True)
    return ImportReport(run_id, len(incoming), len(fresh), len(incoming) - len(fresh), time.perf_counter() - start)
