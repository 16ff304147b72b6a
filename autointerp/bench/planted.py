"""The planted-feature suite: can a scorer tell a feature's true label from vague and wrong ones?

Features come from rules with known labels (`planted_rules`), applied to real text from the built-in corpus
tokenized by the bundled model's tokenizer. They enter the store through the normal path (Parquet files ->
`import_parquet`), are sampled by the normal sampler, and each scorer scores the true label and the three
decoys on the same test split. Reported per scorer: how often the true label beats each decoy (Wilson
95% CI) and the AUROC of true-label scores against decoy scores (bootstrap CI over features).

The LLM scorers run on a subset of rules and a smaller test split (`llm_rules`, `llm_sampling`): the bundled
model's logprob calls take seconds each on a CPU.

    python -m autointerp.bench.planted [--db D] [--scorers embedding,detection] [--out DIR] [--section rules|output|all]

`--section output` runs only the planted output check (`autointerp.bench.planted_output`: SAE features built from
unembedding rows of token families, the logit lens and the output scorer), which writes `planted_output.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autointerp.bench import report
from autointerp.bench.planted_rules import DECOY_KINDS, RULES, RULES_BY_NAME, PlantedRule
from autointerp.config import SamplingConfig, config_hash
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, FeatureExamples
from autointerp.store import Store

DEFAULT_LLM_RULES = ("file_words", "error_words", "digits", "inside_parentheses")
LLM_SCORERS = ("simulation", "detection", "fuzzing")
LABEL_KINDS = ("true", *DECOY_KINDS)


@dataclass(frozen=True)
class PlantedConfig:
    rules: tuple[str, ...] = ()  # rule names; empty: every rule
    scorers: tuple[str, ...] = ("embedding", "detection", "simulation")
    corpus: str = "stdlib-docs"
    n_contexts: int = 1500
    context_len: int = 64
    context_stride: int = 2  # keep every n-th window of the corpus, so the contexts span more documents
    sampling: SamplingConfig = SamplingConfig()
    llm: str = "local"
    base_url: str | None = None
    llm_rules: tuple[str, ...] = DEFAULT_LLM_RULES  # the rules the LLM scorers score
    llm_sampling: SamplingConfig = SamplingConfig(
        n_test_positives=6, n_test_random_negatives=3, n_test_hard_negatives=3, n_valid_positives=2,
        n_valid_random_negatives=1, n_valid_hard_negatives=1,
    )
    scorer_options: dict[str, dict[str, Any]] = field(
        # measured with the bundled model on 2 cores, 12 test contexts: detection ~20 s per label (one excerpt
        # per prompt: it rarely answers a batch in the required form), simulation ~40 s per label
        default_factory=lambda: {
            "simulation": {"before": 6, "after": 2, "contexts_per_prompt": 6},
            "detection": {"before": 10, "after": 5, "batch_size": 1},
        }
    )
    n_bootstrap: int = report.N_BOOTSTRAP


@dataclass
class LabelScore:
    """One scorer's headline score of one label (true or decoy) of one planted feature."""

    rule: str
    feature: int
    scorer: str
    label_kind: str  # true | broad | near_miss | unrelated
    label: str
    metric: str | None
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    error: str | None = None
    note: str | None = None  # why the score is undefined, when it is


@dataclass
class PlantedResult:
    config: PlantedConfig
    source: str
    n_contexts: int
    scores: list[LabelScore]
    summary: list[dict[str, Any]]
    skipped: dict[str, str]  # rule -> why it was not scored
    seconds: dict[str, float]
    characteristic: dict[str, list[str]] = field(default_factory=dict)  # rule -> its characteristic tokens
    notes: dict[str, list[str]] = field(default_factory=dict)  # rule -> the sampler's notes
    files: list[Path] = field(default_factory=list)


def selected_rules(names: tuple[str, ...]) -> list[PlantedRule]:
    if not names:
        return list(RULES)
    unknown = [n for n in names if n not in RULES_BY_NAME]
    if unknown:
        raise AutointerpError(f"unknown planted rule(s) {unknown}; known rules: {', '.join(RULES_BY_NAME)}")
    return [RULES_BY_NAME[n] for n in names]


def feature_of(rule: PlantedRule) -> int:
    """A rule's feature number: its place in RULES, whichever rules a run selects."""
    return RULES.index(rule)


# ---------------------------------------------------------------- building the planted source

def planted_contexts(cfg: PlantedConfig) -> list[list[str]]:
    """`n_contexts` windows of real corpus text as token strings, exactly as the collector makes them."""
    from autointerp.collect.collector import TokenPieces, iter_contexts
    from autointerp.collect.corpora import iter_documents

    tokenizer = _bundled_tokenizer()
    pieces = TokenPieces(tokenizer)
    out: list[list[str]] = []
    for i, ctx in enumerate(iter_contexts(iter_documents(cfg.corpus), tokenizer, cfg.context_len)):
        if i % cfg.context_stride == 0:
            out.append(pieces(ctx.token_ids))
            if len(out) == cfg.n_contexts:
                break
    if len(out) < cfg.n_contexts:
        raise AutointerpError(
            f"corpus {cfg.corpus!r} gives only {len(out)} windows of {cfg.context_len} tokens at stride "
            f"{cfg.context_stride}; ask for fewer contexts (n_contexts) or a stride of 1"
        )
    return out


def _bundled_tokenizer():
    from autointerp.collect.models import bundled_model_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir(), local_files_only=True)


def planted_tables(contexts: list[list[str]], rules: list[PlantedRule]) -> tuple[pa.Table, pa.Table]:
    """The import format: contexts(context_id, tokens) and activations(feature, context_id, pos, value) non-zeros."""
    features, context_ids, positions, values = [], [], [], []
    for rule in rules:
        feature = feature_of(rule)
        for cid, tokens in enumerate(contexts):
            for pos, value in enumerate(rule.fire(tokens)):
                if value:
                    features.append(feature)
                    context_ids.append(cid)
                    positions.append(pos)
                    values.append(value)
    ctx_table = pa.table(
        {"context_id": pa.array(range(len(contexts)), pa.int64()), "tokens": pa.array(contexts, pa.list_(pa.string()))}
    )
    act_table = pa.table(
        {
            "feature": pa.array(features, pa.int32()),
            "context_id": pa.array(context_ids, pa.int64()),
            "pos": pa.array(positions, pa.int32()),
            "value": pa.array(values, pa.float32()),
        }
    )
    return ctx_table, act_table


def source_name(cfg: PlantedConfig) -> str:
    """Same corpus windows and rules -> same name, so a rerun reuses the source (and its LLM cache)."""
    rules_id = [(r.name, r.labels()) for r in RULES]
    return "planted-" + config_hash(cfg.corpus, cfg.n_contexts, cfg.context_len, cfg.context_stride, rules_id)[:10]


def ensure_planted_source(store: Store, cfg: PlantedConfig) -> str:
    """Build the planted source through Parquet + import_parquet unless this store already has it."""
    from autointerp.store.activations import list_sources
    from autointerp.store.importing import import_parquet

    name = source_name(cfg)
    with store.reading() as con:
        if any(s.name == name for s in list_sources(con)):
            return name
    ctx_table, act_table = planted_tables(planted_contexts(cfg), list(RULES))
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        ctx_path, act_path = Path(tmp) / "contexts.parquet", Path(tmp) / "activations.parquet"
        pq.write_table(ctx_table, ctx_path)
        pq.write_table(act_table, act_path)
        import_parquet(store, name, ctx_path, act_path)
    return name


# ---------------------------------------------------------------- scoring

async def score_labels(scorer: Any, rule: PlantedRule, examples: FeatureExamples) -> list[LabelScore]:
    """The rule's true label and its three decoys, scored by one scorer on the same test split."""
    out = []
    for kind, label in rule.labels().items():
        expl = Explanation(examples.source, examples.feature, label, author="planted" if kind == "true" else "decoy")
        try:
            best = report.headline(scorer.name, await scorer.score(expl, examples, split="test"))
        except AutointerpError as exc:
            out.append(LabelScore(rule.name, examples.feature, scorer.name, kind, label, None, None, None, None, 0, str(exc)))
            continue
        out.append(
            LabelScore(
                rule.name, examples.feature, scorer.name, kind, label,
                best.metric if best else None, best.value if best else None,
                best.ci_low if best else None, best.ci_high if best else None, best.n if best else 0,
                note=best.details.get("note") if best and best.value is None else None,
            )
        )
    return out


async def _score_all(
    store: Store, source: str, cfg: PlantedConfig, rules: list[PlantedRule], seconds: dict[str, float],
    sampled: dict[str, FeatureExamples],
):
    from autointerp.llm import make_llm
    from autointerp.sampling import sample
    from autointerp.scoring import make_scorer

    scores: list[LabelScore] = []
    skipped: dict[str, str] = {}
    llm_names = set(cfg.llm_rules)
    llm = None
    try:
        for scorer_name in cfg.scorers:
            started = time.monotonic()
            needs_llm = scorer_name in LLM_SCORERS
            if needs_llm and llm is None:
                llm = make_llm(cfg.llm, store=store, run_id=f"bench-planted-{source}", base_url=cfg.base_url)
            scorer = make_scorer(scorer_name, llm if needs_llm else None, **cfg.scorer_options.get(scorer_name, {}))
            sampling = cfg.llm_sampling if needs_llm else cfg.sampling
            for rule in rules:
                if needs_llm and rule.name not in llm_names:
                    continue
                try:
                    examples = sample(store, source, feature_of(rule), sampling)
                except AutointerpError as exc:
                    skipped[rule.name] = str(exc)
                    continue
                sampled.setdefault(rule.name, examples)
                scores.extend(await score_labels(scorer, rule, examples))
            seconds[scorer_name] = round(time.monotonic() - started, 1)
    finally:
        if llm is not None:
            await llm.aclose()
    return scores, skipped


# ---------------------------------------------------------------- summary

def summarize(scores: list[LabelScore], n_boot: int = report.N_BOOTSTRAP) -> list[dict[str, Any]]:
    """Per scorer: win rate of the true label over each decoy kind, and AUROC of true against all decoys."""
    rows = []
    for scorer in dict.fromkeys(s.scorer for s in scores):
        by_rule: dict[str, dict[str, float | None]] = {}
        metrics = set()
        for s in scores:
            if s.scorer == scorer:
                by_rule.setdefault(s.rule, {})[s.label_kind] = s.value
                if s.metric:
                    metrics.add(s.metric)
        complete = {r: v for r, v in by_rule.items() if v.get("true") is not None}
        true = [v["true"] for v in complete.values()]
        row: dict[str, Any] = {"scorer": scorer, "metric": "/".join(sorted(metrics)), "n_features": len(complete)}
        for kind in DECOY_KINDS:
            w = report.win_rate(true, [v.get(kind) for v in complete.values()])
            row[f"true>{kind}"] = w["rate"]
            row[f"true>{kind}_ci"] = (w["ci_low"], w["ci_high"])
            row[f"true>{kind}_n"] = w["n"]
        a = report.grouped_auroc_with_ci(true, [[v.get(k) for k in DECOY_KINDS] for v in complete.values()], n_boot)
        row.update(auroc=a["auroc"], auroc_ci=(a["ci_low"], a["ci_high"]))
        for kind in LABEL_KINDS:
            row[f"mean_{kind}"] = report.mean_with_ci([v.get(kind) for v in complete.values()], n_boot)["mean"]
        rows.append(row)
    return rows


def summary_table(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary with intervals folded into "value [low, high]" cells, for Markdown."""
    out = []
    for row in summary:
        cells = {"scorer": row["scorer"], "metric": row["metric"], "features": row["n_features"]}
        for kind in DECOY_KINDS:
            cells[f"true > {kind.replace('_', '-')}"] = report.fmt_ci(row[f"true>{kind}"], *row[f"true>{kind}_ci"], digits=2)
        cells["AUROC true vs decoys"] = report.fmt_ci(row["auroc"], *row["auroc_ci"], digits=2)
        cells["mean score true / broad / near / unrel."] = " / ".join(
            report.fmt(row[f"mean_{k}"], 2) for k in LABEL_KINDS
        )
        out.append(cells)
    return out


def per_rule_table(scores: list[LabelScore], characteristic: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for s in scores:
        row = rows.setdefault((s.scorer, s.rule), {"scorer": s.scorer, "rule": s.rule})
        if s.error is None:
            row[s.label_kind] = report.fmt_ci(s.value, s.ci_low, s.ci_high, digits=2) + (f" ({s.note})" if s.note else "")
        else:
            row[s.label_kind] = f"error: {s.error[:40]}"
    if characteristic is not None:
        for (_, rule), row in rows.items():
            row["characteristic tokens"] = " ".join(repr(t) for t in characteristic.get(rule, []))
    return list(rows.values())


def write_report(result: PlantedResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        report.write_csv([dataclasses.asdict(s) for s in result.scores], out_dir / "planted_scores.csv"),
        report.write_csv(
            [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in result.summary],
            out_dir / "planted_summary.csv",
        ),
    ]
    bars = {
        row["scorer"]: {kind: (row[f"true>{kind}"], *row[f"true>{kind}_ci"]) for kind in DECOY_KINDS}
        | {"AUROC": (row["auroc"], *row["auroc_ci"])}
        for row in result.summary
    }
    files.append(
        report.plot_grouped_bars(
            bars, "share of features / AUROC", "Planted features: true label against decoys (95% CI)",
            out_dir / "planted_win_rates.png", reference=0.5,
        )
    )
    groups = {
        f"{scorer}:{kind}": [s.value for s in result.scores if s.scorer == scorer and s.label_kind == kind]
        for scorer in dict.fromkeys(s.scorer for s in result.scores)
        for kind in LABEL_KINDS
    }
    files.append(
        report.plot_distributions(groups, "headline score", "Planted features: scores by label kind", out_dir / "planted_scores.png")
    )
    md = out_dir / "planted.md"
    md.write_text(markdown(result))
    files.append(md)
    return files


def markdown(result: PlantedResult) -> str:
    cfg = result.config
    n_rules = len(selected_rules(cfg.rules))
    lines = [
        "## Planted-feature suite",
        "",
        f"{n_rules} rule-based features on {result.n_contexts} windows of {cfg.context_len} tokens from `{cfg.corpus}` "
        f"(source `{result.source}`). Each scorer scores the true label and three decoys (over-broad, near-miss, "
        "unrelated) on the same test split; `true > X` is the share of features where the true label scores higher "
        "(ties half, Wilson 95% CI); AUROC pools true-label against decoy scores (bootstrap CI over features). "
        f"LLM scorers (`{cfg.llm}`) ran on {len(cfg.llm_rules)} rules with "
        f"{cfg.llm_sampling.n_test_positives}+{cfg.llm_sampling.n_test_random_negatives}+"
        f"{cfg.llm_sampling.n_test_hard_negatives} test contexts each.",
        "",
        report.markdown_table(summary_table(result.summary)),
        "Seconds per scorer: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()) + ".",
        "",
    ]
    if result.skipped:
        lines += ["Skipped rules: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()), ""]
    errors = [s for s in result.scores if s.error]
    if errors:
        lines += [f"{len(errors)} label scorings failed; first: {errors[0].scorer}/{errors[0].rule}: {errors[0].error}", ""]
    lines += [
        "### Per rule (headline score of each label, 95% CI; the characteristic tokens the sampler found)",
        "",
        report.markdown_table(per_rule_table(result.scores, result.characteristic)),
    ]
    return "\n".join(lines)


def run_planted(db: str | Path | None, cfg: PlantedConfig = PlantedConfig(), out_dir: str | Path | None = None) -> PlantedResult:
    """Build (or reuse) the planted source in `db` (default: OUT/planted.duckdb), score, summarize, write files."""
    rules = selected_rules(cfg.rules)
    out = Path(out_dir) if out_dir else None
    db_path = Path(db) if db else (out or Path(tempfile.mkdtemp(prefix="planted-"))) / "planted.duckdb"
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with Store(db_path, create=True) as store:
        source = ensure_planted_source(store, cfg)
        seconds["build"] = round(time.monotonic() - started, 1)
        sampled: dict[str, FeatureExamples] = {}
        scores, skipped = asyncio.run(_score_all(store, source, cfg, rules, seconds, sampled))
    result = PlantedResult(
        cfg, source, cfg.n_contexts, scores, summarize(scores, cfg.n_bootstrap), skipped, seconds,
        characteristic={rule: fe.characteristic_tokens for rule, fe in sampled.items()},
        notes={rule: fe.notes for rule, fe in sampled.items()},
    )
    if out is not None:
        result.files = write_report(result, out)
    return result


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="store to build the planted source in (default: OUT/planted.duckdb)")
    parser.add_argument("--out", default="bench-out/planted", help="folder for the tables and figures")
    parser.add_argument("--scorers", default="embedding,detection,simulation", help="comma-separated scorers")
    parser.add_argument("--rules", default="", help="comma-separated rule names (default: all)")
    parser.add_argument("--llm", default="local", help="model behind the LLM scorers (local, openai:<model>, ...)")
    parser.add_argument("--base-url", default=None, help="endpoint of an OpenAI-compatible server for --llm")
    parser.add_argument(
        "--llm-rules", default=",".join(DEFAULT_LLM_RULES), help="rules the LLM scorers score ('all' for every rule)"
    )
    parser.add_argument("--n-contexts", type=int, default=PlantedConfig.n_contexts)
    parser.add_argument("--llm-test-positives", type=int, default=PlantedConfig().llm_sampling.n_test_positives)
    parser.add_argument(
        "--section", choices=("rules", "output", "all"), default="all",
        help="rules: the rule-based input features; output: the planted output check alone; all: both",
    )
    parser.add_argument("--output-prompts", type=int, default=24, help="neutral prompts of the planted output check")
    parser.add_argument("--output-tokens", type=int, default=16, help="tokens generated per prompt in the output check")


def config_from_args(args: argparse.Namespace) -> PlantedConfig:
    rules = tuple(r for r in args.rules.split(",") if r)
    llm_rules = tuple(r.name for r in selected_rules(rules)) if args.llm_rules == "all" else tuple(
        r for r in args.llm_rules.split(",") if r
    )
    selected_rules(llm_rules)
    base = PlantedConfig()
    return dataclasses.replace(
        base,
        rules=rules,
        scorers=tuple(s for s in args.scorers.split(",") if s),
        llm=args.llm,
        base_url=args.base_url,
        llm_rules=llm_rules,
        n_contexts=args.n_contexts,
        llm_sampling=dataclasses.replace(base.llm_sampling, n_test_positives=args.llm_test_positives),
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run with the arguments of `add_arguments` and print the report (shared by `autointerp bench planted`)."""
    if args.section in ("rules", "all"):
        result = run_planted(args.db, config_from_args(args), args.out)
        print(markdown(result))
        print(f"wrote {', '.join(str(f) for f in result.files)}")
    if args.section in ("output", "all"):
        from autointerp.bench import planted_output

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cfg = planted_output.PlantedOutputConfig(
            scorer_options={"n_prompts": args.output_prompts, "max_new_tokens": args.output_tokens}
        )
        text = planted_output.markdown(planted_output.run_planted_output(out / "planted_output.duckdb", cfg))
        (out / "planted_output.md").write_text(text + "\n")
        print(text)
        print(f"wrote {out / 'planted_output.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m autointerp.bench.planted ...` is `autointerp bench planted ...`."""
    from autointerp.cli import main as cli_main

    return cli_main(["bench", "planted", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
