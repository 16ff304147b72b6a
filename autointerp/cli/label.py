"""`autointerp label`: the batch labeling job (sample, explain, score on held-out contexts, store)."""

from __future__ import annotations

import argparse
import shlex
import textwrap
from typing import TYPE_CHECKING

from autointerp.config import load_job_config
from autointerp.errors import AutointerpError
from autointerp.records import Score
from autointerp.store import Store

# The job's modules (and the scorers behind bench.report) load torch, sklearn and the models: imported when
# a job runs, so that `autointerp label --help` answers at once.
if TYPE_CHECKING:
    from autointerp.baseline import BaselineLabel
    from autointerp.batch_job import BatchProgress
    from autointerp.estimate import CostEstimate
    from autointerp.pipeline import FeatureResult, JobSummary

NAME = "label"
HELP = "Label features with an LLM, score the labels on held-out contexts and store both (resumable)."
LABEL_WIDTH = 48
BASELINE_WIDTH = 28


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store file")
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="job file: these options as keys, plus [sampling] and [scorer_options.<scorer>]; flags override it",
    )
    parser.add_argument("--source", help="source name (see `autointerp features`)")
    parser.add_argument("--features", help="0-99 | 1,5,9 | auto:N (N features across density strata; default auto:20)")
    parser.add_argument("--explainer", help="local | openai:<model> | anthropic:<model> (default local)")
    parser.add_argument("--simulator", help="model for the LLM scorers (default: the explainer)")
    parser.add_argument(
        "--scorers", help="comma list of simulation, detection, fuzzing, embedding (default detection,embedding)"
    )
    parser.add_argument("--prompt", help="explainer prompt: highlight | pairs | contrastive | output | combined (default highlight); "
        "output and combined show the output evidence of `autointerp effects`")
    parser.add_argument(
        "--k", type=int, help="candidate labels per feature; the best on the valid split is kept (default 1)"
    )
    parser.add_argument(
        "--evidence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the explainer the train split's token counts (most frequent activating tokens, tokens before them)",
    )
    parser.add_argument("--concurrency", type=int, help="features (and remote requests) in flight (default 8)")
    parser.add_argument(
        "--base-url", help="endpoint of the models: an OpenAI-compatible server, or a running local server"
    )
    parser.add_argument("--prices", metavar="TOML", help="price table overrides (USD per 1M tokens)")
    parser.add_argument("--seed", type=int, help="sampling seed (default 0)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the requests, tokens and cost it would take; call no model"
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        default=None,
        help="send the requests as provider batches (openai, anthropic: half price, done within 24 h per phase); "
        "run the same command again to collect answers and submit the next phase",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="explain and score on the workers of a Ray cluster (needs `pip install 'autointerp[ray]'`): a running "
        "cluster's HOST:PORT or ray://HOST:PORT, or `auto` (the default when ADDRESS is left out) for a local "
        "cluster; the store is written by this process only",
    )
    parser.add_argument(
        "--ray-workers", type=int, help="Ray workers, --concurrency features each (default: one per CPU of the cluster)"
    )
    parser.add_argument("--wait", action="store_true", help="with --batch: stay, poll and continue until the job is done")
    parser.add_argument(
        "--poll", type=float, default=60.0, metavar="SECONDS", help="with --wait: seconds between polls (default 60)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    job = load_job_config(
        args.config,
        source=args.source,
        features=args.features,
        explainer=args.explainer,
        simulator=args.simulator,
        scorers=[s.strip() for s in args.scorers.split(",") if s.strip()] if args.scorers else None,
        prompt=args.prompt,
        k=args.k,
        evidence=args.evidence,
        concurrency=args.concurrency,
        base_url=args.base_url,
        prices=args.prices,
        seed=args.seed,
        batch=args.batch,
        ray=args.ray,
        ray_workers=args.ray_workers,
    )
    from autointerp.estimate import estimate_job
    from autointerp.pipeline import run_label_job

    if args.wait and not job.batch:
        raise AutointerpError("--wait goes with --batch (a streaming job always runs to the end)")
    if args.dry_run:
        with Store(args.db, read_only=True) as store:
            print_estimate(estimate_job(store, job))
        return 0
    if job.batch:
        from autointerp.batch_job import run_batch_job

        state = run_batch_job(Store(args.db), job, wait=args.wait, poll_s=args.poll, progress=not args.quiet)
        print_batch_state(state, args.db)
        return 0
    summary = run_label_job(Store(args.db), job, progress=not args.quiet)
    print_summary(summary, args.db)
    return rerun_hint(summary, getattr(args, "argv", None) or ["label", "--db", args.db])


def rerun_hint(summary: JobSummary, argv: list[str]) -> int:
    """The exit status of a finished job: 1 when features failed for a cause a rerun may not meet again (a
    transient LLM error), with the command that tries them again. Features whose answer did not parse stay
    failed on a rerun (the ledger answers the same): they are listed above and leave the status at 0."""
    retry = [r for r in summary.with_status("failed") if r.rerun_may_help]
    if not retry:
        return 0
    print(
        f"\n{len(retry)} feature(s) failed for a cause a rerun may not meet again (exit status 1). The same command "
        f"tries them again and keeps every label already stored:\n  autointerp {shlex.join(argv)}"
    )
    return 1


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def score_cell(score: Score | None) -> str:
    """The score with its CI and n; an undefined score says why (the scorer's note)."""
    from autointerp.bench.report import fmt_ci

    if score is None:
        return "-"
    cell = f"{score.metric} {fmt_ci(score.value, score.ci_low, score.ci_high, 2)} n={score.n}"
    note = score.details.get("note") if score.value is None else None
    return f"{cell} ({note})" if note else cell


def baseline_cell(baseline: BaselineLabel | None) -> str:
    """The non-LLM label and its embedding score, as the summary shows it beside the LLM's."""
    from autointerp.bench.report import fmt_ci

    if baseline is None:
        return "-"
    if baseline.label is None:
        return textwrap.shorten(f"(none: {baseline.error})", BASELINE_WIDTH)
    score = baseline.score
    value = "-" if score is None else fmt_ci(score.value, None, None, 2)
    return f"{textwrap.shorten(baseline.label, BASELINE_WIDTH)} ({value})"


def print_labels(results: list[FeatureResult]) -> None:
    from autointerp.bench.report import headline

    labeled = [r for r in results if r.status in ("done", "already_done")]
    scorers = list(dict.fromkeys(s.scorer for r in labeled for s in r.scores))
    if labeled:
        rows = [
            [
                str(r.feature),
                textwrap.shorten(r.label or "", LABEL_WIDTH),
                *(score_cell(headline(name, [s for s in r.scores if s.scorer == name])) for name in scorers),
                baseline_cell(r.baseline),
            ]
            + (["(earlier run)"] if r.status == "already_done" else [""])
            for r in sorted(labeled, key=lambda r: r.feature)
        ]
        print()
        print_table(["feature", "label", *scorers, "baseline label (embedding auroc)", ""], rows)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"\nfailed ({len(failed)}; no label stored, details in the failures table):")
        for r in failed:
            print(f"  feature {r.feature} at {r.stage}: {textwrap.shorten(r.error or '', 100)}")
            if r.baseline is not None and r.baseline.label:
                print(f"    baseline label: {baseline_cell(r.baseline)}")
    sparse = [r for r in results if r.status == "skipped_sparse"]
    if sparse:
        print(f"\nskipped as too sparse to label ({len(sparse)}): features {', '.join(str(r.feature) for r in sparse)}")


def print_summary(summary: JobSummary, db: str) -> None:
    print_labels(summary.results)
    print_versus_baseline(summary)
    duplicates = summary.near_duplicates()
    if duplicates:
        print(f"\nnear-duplicate labels across features ({len(duplicates)} pairs; the explainer may be repeating itself):")
        for d in duplicates:
            print(f"  {d.feature_a} ~ {d.feature_b} (cosine {d.similarity:.2f}): {textwrap.shorten(d.label_a, 60)!r}")
    counts, usage = summary.counts(), summary.usage
    print(
        f"\nrun {summary.run_id} {summary.status}: {counts['done']} labeled, {counts['already_done']} already done, "
        f"{counts['failed']} failed, {counts['skipped_sparse']} too sparse in {summary.seconds:.0f} s"
    )
    print(
        f"LLM: {usage.calls} calls ({usage.cached} answered from the cache), {usage.prompt_tokens:,} prompt + "
        f"{usage.completion_tokens:,} completion tokens, ${usage.cost_usd:.4f}"
    )
    print(f'browse: autointerp serve --db {db}    search: autointerp search --db {db} "words"')


def print_batch_state(state: BatchProgress, db: str) -> None:
    if state.done:
        print_labels(state.results)
    f = state.features
    print(
        f"\nbatch run {state.run_id} {state.status}: {f.get('done', 0)} labeled, {f.get('failed', 0)} failed, "
        f"{f.get('skipped_sparse', 0)} too sparse, {f.get('explain', 0) + f.get('score', 0)} in progress"
    )
    open_ = state.open_batches()
    if open_:
        ids = ", ".join(b.provider_batch_id or b.batch_key for b in open_)
        print(f"{len(open_)} provider batch(es) open: {ids}")
        print("run the same command again to collect finished batches and submit the next phase (or add --wait)")
    print(f"details: autointerp runs --db {db} --run {state.run_id}")


def print_versus_baseline(summary: JobSummary) -> None:
    from autointerp.bench.report import fmt_ci

    compared = summary.versus_baseline()
    wins, diff = compared["wins"], compared["mean_difference"]
    if not wins["n"]:
        return
    print(
        f"\nLLM label vs baseline on embedding AUROC, {wins['n']} features: LLM higher in "
        f"{fmt_ci(wins['rate'], wins['ci_low'], wins['ci_high'], 2)} of them (ties half, 95% CI); "
        f"mean difference {fmt_ci(diff['mean'], diff['ci_low'], diff['ci_high'], 3)}"
    )


def print_estimate(est: CostEstimate) -> None:
    print(
        f"dry run: {est.n_features} features to label ({est.n_already_done} already done); request sizes measured on "
        f"{est.n_sampled} of them; no model was called"
    )
    rows = [
        [
            s.stage,
            s.model,
            f"{s.requests:.1f}",
            f"{s.prompt_tokens:,.0f}",
            f"{s.max_completion_tokens:,.0f}",
            "no price" if s.cost_usd is None else f"${s.cost_usd:.5f}",
        ]
        for s in est.stages
    ]
    print_table(["stage", "model", "requests", "prompt tokens", "completion tokens (max)", "cost (max)"], rows)
    per_feature = est.cost_per_feature
    prompt = sum(s.prompt_tokens for s in est.stages)
    completion = sum(s.max_completion_tokens for s in est.stages)
    print(
        f"per feature: {est.requests_per_feature:.1f} requests, ~{prompt:,.0f} prompt + <= {completion:,.0f} completion tokens"
        + ("" if per_feature is None else f", <= ${per_feature:.5f}")
    )
    total = (
        "unknown (a model has no price: give --prices FILE)"
        if per_feature is None
        else f"<= ${per_feature * est.n_features:.4f}"
    )
    batch_per_feature = est.batch_cost_per_feature
    if batch_per_feature is not None:
        total += f" streamed, <= ${batch_per_feature * est.n_features:.4f} with --batch"
    print(
        f"whole job: ~{est.requests_per_feature * est.n_features:,.0f} requests, ~{prompt * est.n_features:,.0f} prompt tokens, "
        f"cost {total} (prices as of {est.prices_as_of}; prompt tokens estimated as characters / 4; "
        "answers already in the ledger cost nothing)"
    )
