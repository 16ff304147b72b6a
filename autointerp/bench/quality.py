"""The label-quality benchmark: explainer setups (model, prompt, k) compared on one frozen feature set.

The features are chosen by seed across density strata and sampled once, so every setup is scored on the
same test contexts. Each setup is a labeling job (`job_for`) run through the job's own stages
(`autointerp.stages`: sample, explain with best of k, score), so the bench measures what `autointerp label`
produces, with the same requests (a later job for the same setup is answered by the call cache).

Every report carries two controls: the non-LLM baseline explainer (an LLM explainer has to beat it) and
shuffled labels (each feature scored with another feature's label from the same setup; the gap to the real
labels is the scorer's headroom). Scorer agreement is the Spearman correlation of the scorers' headline scores
across labels. Tokens and cost come from the LLM ledger; a rerun is answered by the call cache and reproduces
every figure.

    python -m autointerp.bench.quality --db demo/demo.duckdb --config data/bench.toml [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autointerp import stages
from autointerp.bench import report
from autointerp.config import JobConfig, SamplingConfig, from_dict, load_toml
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, FeatureExamples
from autointerp.resources import DATA_DIR
from autointerp.store import Store

BASELINE = "baseline"
SHUFFLED_SUFFIX = " [shuffled]"
DEFAULT_CONFIG = DATA_DIR / "bench.toml"


@dataclass(frozen=True)
class ExplainerSetup:
    """One configuration under test. explainer: "baseline" (no LLM) or an LLM spec (local, openai:<model>...)."""

    name: str
    explainer: str = "local"
    prompt: str = "highlight"
    k: int = 1
    evidence: bool = False  # the train split's token counts in the prompt (autointerp.evidence)


@dataclass(frozen=True)
class QualityConfig:
    source: str = ""  # "" : the store's only source
    n_features: int = 12
    seed: int = 0
    scorers: tuple[str, ...] = ("embedding", "detection")
    scorer_model: str = "local"  # the LLM behind the LLM scorers
    base_url: str | None = None
    explainers: tuple[ExplainerSetup, ...] = (ExplainerSetup("local-highlight", "local"),)
    shuffled_control: bool = True
    concurrency: int = 4
    sampling: SamplingConfig = SamplingConfig()
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_bootstrap: int = report.N_BOOTSTRAP

    def setups(self) -> list[ExplainerSetup]:
        """The configured setups, with the baseline explainer added first when the file leaves it out."""
        setups = list(self.explainers)
        if not any(s.explainer == BASELINE for s in setups):
            setups.insert(0, ExplainerSetup(BASELINE, BASELINE))
        return setups


def config_from_dict(data: dict[str, Any], where: str = "bench config") -> QualityConfig:
    data = dict(data)
    if "sampling" in data:
        data["sampling"] = from_dict(SamplingConfig, data["sampling"], f"{where} [sampling]")
    if "explainers" in data:
        data["explainers"] = tuple(from_dict(ExplainerSetup, e, f"{where} [[explainers]]") for e in data["explainers"])
    if "scorers" in data:
        data["scorers"] = tuple(data["scorers"])
    cfg = from_dict(QualityConfig, data, where)
    names = [s.name for s in cfg.setups()]
    if len(set(names)) != len(names):
        raise AutointerpError(f"explainer setup names repeat in {where}: {names}; give each [[explainers]] its own name")
    return cfg


def load_config(path: str | Path = DEFAULT_CONFIG) -> QualityConfig:
    return config_from_dict(load_toml(path), str(path))


@dataclass
class LabelRow:
    """One label's scores: a setup's label for a feature (or a shuffled-control label) under every scorer."""

    setup: str
    feature: int
    density: float
    label: str
    label_from_feature: int  # != feature for shuffled-control labels
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # "scorer/metric/subset" -> value, ci, n

    def headline(self, scorer: str) -> float | None:
        return self.scores.get(scorer, {}).get("headline")


@dataclass
class QualityResult:
    config: QualityConfig
    source: str
    features: list[int]
    labels: list[LabelRow]
    failures: list[dict[str, Any]]  # setup, feature, stage, error
    usage: dict[str, dict[str, float]]  # setup -> per-feature tokens and cost; "<setup> [shuffled]": its control's own
    run_ids: dict[str, str]
    seconds: float
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- running

def _resolve_source(store: Store, name: str):
    from autointerp.store.activations import get_source, list_sources

    with store.reading() as con:
        if name:
            return get_source(con, name)
        sources = [s for s in list_sources(con) if s.status == "ready"]
    if len(sources) != 1:
        names = ", ".join(s.name for s in sources) or "none"
        raise AutointerpError(f"name the source to benchmark (`source` in the bench config); the store holds: {names}")
    return sources[0]


def _densities(store: Store, source_id: int) -> dict[int, float]:
    from autointerp.store.activations import list_feature_stats

    with store.reading() as con:
        return {s.feature: s.density for s in list_feature_stats(con, source_id)}


def derangement(items: list[int], seed: int) -> dict[int, int]:
    """item -> another item (never itself when there are two or more): who lends its label to whom."""
    if len(items) < 2:
        return {}
    order = list(np.random.default_rng(seed).permutation(items))
    return {int(order[i]): int(order[(i + 1) % len(order)]) for i in range(len(order))}


def job_for(cfg: QualityConfig, source: str, setup: ExplainerSetup = ExplainerSetup(BASELINE, BASELINE)) -> JobConfig:
    """The labeling job one setup is: the bench runs its stages (`autointerp.stages`), not a copy of them."""
    return JobConfig(
        source=source, features=f"auto:{cfg.n_features}", explainer=setup.explainer, simulator=cfg.scorer_model,
        scorers=cfg.scorers, prompt=setup.prompt, k=setup.k, evidence=setup.evidence, sampling=cfg.sampling,
        scorer_options=cfg.scorer_options, concurrency=cfg.concurrency, base_url=cfg.base_url,
    )


async def _explain(job: JobConfig, examples: FeatureExamples, llm) -> Explanation:
    from autointerp.explain import explain_baseline

    if job.explainer == BASELINE:
        return explain_baseline(examples)
    return await stages.explain(examples, llm, job)


async def _score(job: JobConfig, scorer_llm, row: LabelRow, explanation: Explanation, examples: FeatureExamples, failures) -> None:
    """The job's score stage, one scorer at a time: a scorer that fails leaves the others' scores in the report."""
    for scorer in stages.make_scorers(job, lambda _spec: scorer_llm):
        try:
            scores = await stages.score(explanation, examples, [scorer])
        except AutointerpError as exc:
            failures.append({"setup": row.setup, "feature": row.feature, "stage": f"score:{scorer.name}", "error": str(exc)})
            continue
        best = report.headline(scorer.name, scores)
        if best is None or best.value is None:
            why = (best.details.get("note") if best else None) or "undefined: unparsed answers or a single class"
            failures.append({"setup": row.setup, "feature": row.feature, "stage": f"score:{scorer.name}", "error": why})
        row.scores[scorer.name] = {
            "headline": best.value if best else None,
            "headline_metric": best.metric if best else None,
            "all": [
                {"metric": s.metric, "subset": s.subset, "value": s.value, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}
                for s in scores
            ],
        }


async def _run_setups(store: Store, cfg: QualityConfig, source: str, examples: dict[int, FeatureExamples], densities):
    from autointerp.pipeline import make_job_llm, new_run_id
    from autointerp.scoring import NEEDS_LLM
    from autointerp.scoring.common import gather_limited

    labels: list[LabelRow] = []
    failures: list[dict[str, Any]] = []
    run_ids: dict[str, str] = {}
    for setup in cfg.setups():
        job = job_for(cfg, source, setup)
        run_id = run_ids[setup.name] = new_run_id("bench")
        _start_run(store, run_id, cfg, setup, source, sorted(examples))
        control_run_id = None
        if cfg.shuffled_control:  # its own run, so the control's scoring calls are not billed to the setup
            control_run_id = run_ids[setup.name + SHUFFLED_SUFFIX] = new_run_id("bench")
            _start_run(store, control_run_id, cfg, setup, source, sorted(examples), control="shuffled labels")
        status, explainer, scorer_llm, control_llm = "failed", None, None, None
        try:
            if setup.explainer != BASELINE:
                explainer = make_job_llm(job.explainer, job, store=store, run_id=run_id)
            if set(cfg.scorers) & NEEDS_LLM:
                simulator = stages.simulator_spec(job)
                scorer_llm = make_job_llm(simulator, job, store=store, run_id=run_id)
                if control_run_id:
                    control_llm = make_job_llm(simulator, job, store=store, run_id=control_run_id)
            explained: dict[int, Explanation] = {}

            async def one(feature: int) -> None:
                try:
                    expl = await _explain(job, examples[feature], explainer)
                except AutointerpError as exc:
                    failures.append({"setup": setup.name, "feature": feature, "stage": "explain", "error": str(exc)})
                    return
                explained[feature] = expl
                row = LabelRow(setup.name, feature, densities.get(feature, float("nan")), expl.label, feature)
                await _score(job, scorer_llm, row, expl, examples[feature], failures)
                labels.append(row)

            await gather_limited([lambda f=f: one(f) for f in examples], cfg.concurrency)
            if control_run_id:
                lender = derangement(sorted(explained), cfg.seed)

                async def control(feature: int) -> None:
                    expl = explained[lender[feature]]
                    row = LabelRow(setup.name + SHUFFLED_SUFFIX, feature, densities.get(feature, float("nan")), expl.label, lender[feature])
                    await _score(job, control_llm, row, dataclasses.replace(expl, feature=feature), examples[feature], failures)
                    labels.append(row)

                await gather_limited([lambda f=f: control(f) for f in sorted(lender)], cfg.concurrency)
            status = "done"
        finally:
            for llm in (explainer, scorer_llm, control_llm):
                if llm is not None:
                    await llm.aclose()
            for name, rid in ((setup.name, run_id), (setup.name + SHUFFLED_SUFFIX, control_run_id)):
                if rid:
                    n_done = sum(1 for r in labels if r.setup == name)
                    n_failed = len({f["feature"] for f in failures if f["setup"] == name})
                    _end_run(store, rid, status, n_done, n_failed)
    labels.sort(key=lambda r: (r.setup, r.feature))
    failures.sort(key=lambda f: (f["setup"], f["feature"], f["stage"]))
    return labels, failures, run_ids


def _start_run(
    store: Store, run_id: str, cfg: QualityConfig, setup: ExplainerSetup, source: str, features: list[int], control: str | None = None
) -> None:
    """A `runs` row per setup and per control (kind "bench"), so `autointerp runs` and `autointerp costs --run` show it."""
    from autointerp.config import config_hash
    from autointerp.store import jobs

    config = {
        "bench": "quality", "source": source, "setup": dataclasses.asdict(setup), "scorers": list(cfg.scorers),
        "scorer_model": cfg.scorer_model, "sampling": dataclasses.asdict(cfg.sampling), "features": features,
        **({"control": control} if control else {}),
    }
    with store.writing() as con:
        jobs.create_run(con, run_id, "bench", config, config_hash(config), len(features))


def _end_run(store: Store, run_id: str, status: str, n_done: int, n_failed: int) -> None:
    """Tokens and cost as a label run counts them: what was billed, cache hits excluded."""
    from autointerp.store import jobs
    from autointerp.store.llm_calls import spend

    with store.writing() as con:
        rows = spend(con, run_id)
        jobs.update_run(
            con, run_id, status=status, n_done=n_done, n_failed=n_failed,
            prompt_tokens=sum(r["prompt_tokens"] for r in rows), completion_tokens=sum(r["completion_tokens"] for r in rows),
            cost_usd=sum(r["cost_usd"] for r in rows), ended=True,
        )


def _usage_per_feature(store: Store, run_ids: dict[str, str], n_features: int) -> dict[str, dict[str, float]]:
    from autointerp.store.bench_queries import run_usage

    out = {}
    with store.reading() as con:
        for setup, run_id in run_ids.items():
            usage = run_usage(con, run_id)
            explain = usage.get("explain")
            scoring = [u for stage, u in usage.items() if stage != "explain"]
            n = max(1, n_features)
            out[setup] = {
                "explain_tokens": (explain.prompt_tokens + explain.completion_tokens) / n if explain else 0.0,
                "score_tokens": sum(u.prompt_tokens + u.completion_tokens for u in scoring) / n,
                # rounded: the ledger's float sums come in no fixed order, and a rerun must print the same figure
                "cost_usd": round(sum(u.cost_usd for u in usage.values()) / n, 9),
                "llm_errors": sum(u.n_errors for u in usage.values()),
                "new_cost_usd": round(sum(u.new_cost_usd for u in usage.values()), 9),
                "cached_calls": sum(u.n_cached for u in usage.values()),
                "calls": sum(u.n_calls for u in usage.values()),
            }
    return out


def run_quality(db: str | Path, cfg: QualityConfig, out_dir: str | Path | None = None) -> QualityResult:
    """Run every setup on the frozen feature set of `db`; write the tables and figures when `out_dir` is given."""
    from autointerp.pipeline import resolve_features

    started = time.monotonic()
    if not Path(db).exists():
        raise AutointerpError(f"no store at {db}: run `make demo` (or `autointerp collect`) first, or pass --db")
    with Store(db) as store:
        source = _resolve_source(store, cfg.source)
        job = job_for(cfg, source.name)
        with store.reading() as con:
            features = resolve_features(con, source, job.features, job.sampling)
        densities = _densities(store, source.source_id)
        examples, failures = {}, []
        # auto-chosen features all fire: every one is sampled
        for feature, got in stages.sample_features(store, job, source, features, firing=set(features)):
            if isinstance(got, AutointerpError):
                failures.append({"setup": "*", "feature": feature, "stage": "sample", "error": str(got)})
            else:
                examples[feature] = got
        store.close()  # the ledger writes in its own short transactions
        labels, run_failures, run_ids = asyncio.run(_run_setups(store, cfg, source.name, examples, densities))
        usage = _usage_per_feature(store, run_ids, len(examples))
    result = QualityResult(
        cfg, source.name, sorted(examples), labels, failures + run_failures, usage, run_ids,
        round(time.monotonic() - started, 1),
    )
    if out_dir is not None:
        result.files = write_report(result, Path(out_dir))
    return result


# ---------------------------------------------------------------- summarizing

def _setups_in(result: QualityResult) -> list[str]:
    return list(dict.fromkeys(r.setup for r in sorted(result.labels, key=lambda r: _setup_order(result, r.setup))))


def _setup_order(result: QualityResult, setup: str) -> tuple[int, int]:
    names = [s.name for s in result.config.setups()]
    base = setup.removesuffix(SHUFFLED_SUFFIX)
    return (names.index(base) if base in names else len(names), int(setup.endswith(SHUFFLED_SUFFIX)))


def metric_rows(result: QualityResult) -> list[dict[str, Any]]:
    """Mean, median and bootstrap CI over features of every (setup, scorer, metric, subset)."""
    n_boot = result.config.n_bootstrap
    rows = []
    for setup in _setups_in(result):
        mine = [r for r in result.labels if r.setup == setup]
        usage = result.usage.get(setup, {})
        failures = sum(1 for f in result.failures if f["setup"] == setup)
        for scorer in result.config.scorers:
            keys = list(dict.fromkeys((s["metric"], s["subset"]) for r in mine for s in r.scores.get(scorer, {}).get("all", [])))
            for metric, subset in keys:
                values = [
                    next((s["value"] for s in r.scores.get(scorer, {}).get("all", []) if (s["metric"], s["subset"]) == (metric, subset)), None)
                    for r in mine
                ]
                stats = report.mean_with_ci(values, n_boot)
                rows.append(
                    {
                        "setup": setup, "scorer": scorer, "metric": metric, "subset": subset,
                        "mean": stats["mean"], "median": stats["median"], "ci_low": stats["ci_low"],
                        "ci_high": stats["ci_high"], "n_features": stats["n"],
                        "explain_tokens_per_feature": usage.get("explain_tokens"),
                        "score_tokens_per_feature": usage.get("score_tokens"),
                        "cost_usd_per_feature": usage.get("cost_usd"),
                        "failures": failures,
                    }
                )
    return rows


def _headlines(result: QualityResult, setup: str, scorer: str) -> dict[int, float | None]:
    return {r.feature: r.headline(scorer) for r in result.labels if r.setup == setup}


def _paired(a: dict[int, float | None], b: dict[int, float | None], n_boot: int) -> dict[str, Any]:
    diffs = [a[f] - b[f] for f in sorted(set(a) & set(b)) if a[f] is not None and b[f] is not None]
    return report.mean_with_ci(diffs, n_boot)


def control_rows(result: QualityResult) -> list[dict[str, Any]]:
    """Per setup and scorer: headroom (real minus shuffled labels) and the gain over the baseline explainer."""
    n_boot = result.config.n_bootstrap
    setups = [s for s in _setups_in(result) if not s.endswith(SHUFFLED_SUFFIX)]
    rows = []
    for setup in setups:
        for scorer in result.config.scorers:
            real = _headlines(result, setup, scorer)
            shuffled = _headlines(result, setup + SHUFFLED_SUFFIX, scorer)
            head = _paired(real, shuffled, n_boot)
            row = {
                "setup": setup, "scorer": scorer,
                "real": report.mean_with_ci(list(real.values()), n_boot)["mean"],
                "shuffled": report.mean_with_ci(list(shuffled.values()), n_boot)["mean"],
                "headroom": report.fmt_ci(head["mean"], head["ci_low"], head["ci_high"]),
            }
            if setup != BASELINE:
                base = _headlines(result, BASELINE, scorer)
                gain = _paired(real, base, n_boot)
                paired = [(real[f], base[f]) for f in sorted(set(real) & set(base))]
                win = report.win_rate([p[0] for p in paired], [p[1] for p in paired])
                row["minus baseline"] = report.fmt_ci(gain["mean"], gain["ci_low"], gain["ci_high"])
                row["beats baseline"] = report.fmt_ci(win["rate"], win["ci_low"], win["ci_high"], 2)
            rows.append(row)
    return rows


def agreement_rows(result: QualityResult) -> list[dict[str, Any]]:
    """Spearman correlation of every pair of scorers' headline scores over all real (not shuffled) labels."""
    real = [r for r in result.labels if not r.setup.endswith(SHUFFLED_SUFFIX)]
    rows = []
    for a, b in itertools.combinations(result.config.scorers, 2):
        rho = report.spearman_with_ci([r.headline(a) for r in real], [r.headline(b) for r in real], result.config.n_bootstrap)
        rows.append({"scorers": f"{a} vs {b}", "spearman": report.fmt_ci(rho["rho"], rho["ci_low"], rho["ci_high"]), "n_labels": rho["n"]})
    return rows


def label_rows(result: QualityResult) -> list[dict[str, Any]]:
    rows = []
    for r in result.labels:
        for scorer, entry in r.scores.items():
            for s in entry["all"]:
                rows.append(
                    {"setup": r.setup, "feature": r.feature, "density": r.density, "label": r.label,
                     "label_from_feature": r.label_from_feature, "scorer": scorer, **s}
                )
    return rows


# ---------------------------------------------------------------- writing

def markdown(result: QualityResult) -> str:
    cfg = result.config
    main = [
        {
            "setup": row["setup"], "scorer": row["scorer"], "metric": row["metric"],
            "mean [95% CI]": report.fmt_ci(row["mean"], row["ci_low"], row["ci_high"]),
            "median": row["median"], "features": row["n_features"],
            "tokens/feature (explain+score)": _tokens_cell(row),
            "$/feature": row["cost_usd_per_feature"], "failures": row["failures"],
        }
        for row in metric_rows(result)
        if row["subset"] == "all"
    ]
    lines = [
        "## Label quality",
        "",
        f"Source `{result.source}`: {len(result.features)} features chosen by seed {cfg.seed} across density strata, "
        f"test split {cfg.sampling.n_test_positives} positives + {cfg.sampling.n_test_random_negatives} random + "
        f"{cfg.sampling.n_test_hard_negatives} hard negatives. Scorers: {', '.join(cfg.scorers)} "
        f"(LLM scorers on `{cfg.scorer_model}`). CIs: bootstrap over features.",
        "",
        report.markdown_table(main),
        "### Controls: headroom (real minus shuffled labels) and gain over the non-LLM baseline",
        "",
        report.markdown_table(control_rows(result)),
    ]
    agreement = agreement_rows(result)
    if agreement:
        lines += ["### Scorer agreement (Spearman over labels, bootstrap CI)", "", report.markdown_table(agreement)]
    if result.failures:
        lines += ["### Failures", "", report.markdown_table([{**f, "error": f["error"][:120]} for f in result.failures])]
    return "\n".join(lines)


def _tokens_cell(row: dict[str, Any]) -> str:
    if row["explain_tokens_per_feature"] is None:
        return "–"
    return f"{row['explain_tokens_per_feature']:.0f}+{row['score_tokens_per_feature']:.0f}"


def write_report(result: QualityResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        report.write_csv(metric_rows(result), out_dir / "quality_summary.csv"),
        report.write_csv(label_rows(result), out_dir / "quality_labels.csv"),
    ]
    setups = _setups_in(result)
    priced = any(u["cost_usd"] > 0 for u in result.usage.values())
    for scorer in result.config.scorers:
        metric = next((r.scores[scorer]["headline_metric"] for r in result.labels if scorer in r.scores), "score")
        files.append(
            report.plot_distributions(
                {s: list(_headlines(result, s, scorer).values()) for s in setups},
                f"{scorer} {metric}", f"{scorer}: score per feature, by setup", out_dir / f"quality_distribution_{scorer}.png",
            )
        )
        points = []
        for s in setups:
            usage = result.usage.get(s.removesuffix(SHUFFLED_SUFFIX), {})
            stats = report.mean_with_ci(list(_headlines(result, s, scorer).values()), result.config.n_bootstrap)
            x = usage.get("cost_usd") if priced else usage.get("explain_tokens", 0) + usage.get("score_tokens", 0)
            points.append({"name": s, "x": x, "y": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]})
        files.append(
            report.plot_points_with_ci(
                points, "x", "y", "$ per feature" if priced else "LLM tokens per feature (explain + score)",
                f"mean {scorer} {metric}", f"{scorer}: cost against quality", out_dir / f"quality_cost_{scorer}.png",
            )
        )
        files.append(
            report.plot_scatter_groups(
                {s: [(r.density, r.headline(scorer)) for r in result.labels if r.setup == s] for s in setups},
                "feature density (active tokens / tokens)", f"{scorer} {metric}", f"{scorer}: score against density",
                out_dir / f"quality_density_{scorer}.png", log_x=True,
            )
        )
    md = out_dir / "quality.md"
    md.write_text(markdown(result))
    files.append(md)
    return files


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store holding the source to benchmark")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="bench TOML (default: data/bench.toml)")
    parser.add_argument("--out", default="bench-out/quality", help="folder for the tables and figures")


def run_from_args(args: argparse.Namespace) -> int:
    """Run with the arguments of `add_arguments` and print the report (shared by `autointerp bench quality`)."""
    result = run_quality(args.db, load_config(args.config), args.out)
    print(markdown(result))
    print(f"\n{result.seconds} s; wrote {', '.join(str(f) for f in result.files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m autointerp.bench.quality ...` is `autointerp bench quality ...`."""
    from autointerp.cli import main as cli_main

    return cli_main(["bench", "quality", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
