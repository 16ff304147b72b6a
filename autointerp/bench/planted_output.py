"""The planted output check: SAE features built to promote a known token family, labeled by what they do.

Each feature's decoder row is the mean of the bundled model's unembedding rows of one token family (month names,
weekdays, colours, number words, animals) minus the mean row of the whole vocabulary, normalised; its encoder
reads the same direction. The SAE is saved as
a real SAELens folder, collected over a little corpus text like any SAE (so the feature has stored activations
and a max), then:
- output evidence: `autointerp.output_evidence.logit_lens` of each decoder row must name the family (the share of
  the top promoted tokens that belong to it);
- output scorer: each feature's true label and the other families' labels (decoys) are scored by the output
  scorer on the same steered continuations; reported: how often the true label beats a decoy (Wilson 95% CI over
  feature-decoy pairs) and AUROC of true against decoy scores (bootstrap CI over features), with time per
  feature (subject-model compute, no paid tokens; CUDA when present).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.bench import report
from autointerp.collect.models import SubjectModel

FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "months": ("names of the months (January, February, ...)", (
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December")),
    "weekdays": ("days of the week (Monday, Tuesday, ...)", (
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")),
    "colours": ("colour words (red, green, blue, ...)", (
        "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white")),
    "numbers": ("number words (one, two, three, ...)", (
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")),
    "animals": ("animal names (dog, cat, horse, ...)", (
        "dog", "cat", "horse", "cow", "sheep", "lion", "tiger", "bird", "fish", "rabbit")),
}
SOURCE = "planted-output"
LENS_DEPTH = 200  # promoted tokens searched for the first token of a family


@dataclass(frozen=True)
class PlantedOutputConfig:
    families: tuple[str, ...] = tuple(FAMILIES)
    layer: int = 20
    tokens: int = 2048  # corpus tokens collected through the planted SAE
    context_len: int = 32
    top_k: int = 10  # logit-lens tokens checked for the family
    scorer_options: dict[str, Any] = field(default_factory=lambda: {"n_prompts": 24, "max_new_tokens": 16})
    device: str | None = None
    n_bootstrap: int = report.N_BOOTSTRAP


@dataclass
class PlantedOutputResult:
    config: PlantedOutputConfig
    device: str
    lens: list[dict[str, Any]]  # per family: top promoted tokens and the share in the family
    scores: list[dict[str, Any]]  # per (family, label kind): the output scorer's delta_cosine with CI
    summary: dict[str, Any]
    seconds: dict[str, float]


def family_token_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """The first token of " Word" for each word (the form that follows a space in running text)."""
    return [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]


def in_family(token: str, words: tuple[str, ...]) -> bool:
    t = token.strip().lower()
    return bool(t) and any(w.lower().startswith(t) and len(t) >= min(3, len(w)) for w in words)


def write_planted_sae(folder: Path, subject: SubjectModel, families: tuple[str, ...], layer: int) -> Path:
    """A standard (ReLU) SAELens folder whose latent i reads and writes family i's mean unembedding direction."""
    from safetensors.numpy import save_file

    from autointerp.output_evidence import output_embedding_weight

    unembed = output_embedding_weight(subject).cpu()
    common = unembed.mean(0)  # shared by every token's row: without removing it, all families look alike
    rows = []
    for name in families:
        d = unembed[family_token_ids(subject.tokenizer, FAMILIES[name][1])].mean(0) - common
        rows.append(d / d.norm())
    W_dec = torch.stack(rows).numpy().astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"W_enc": np.ascontiguousarray(W_dec.T), "b_enc": np.zeros(len(families), np.float32), "W_dec": W_dec,
         "b_dec": np.zeros(subject.d_model, np.float32)},
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard", "d_in": subject.d_model, "d_sae": len(families), "dtype": "float32",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "metadata": {"model_name": subject.name, "hook_name": f"blocks.{layer}.hook_resid_post"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def build_planted_source(store: Any, folder: Path, subject: SubjectModel, cfg: PlantedOutputConfig) -> Any:
    """Write the SAE and collect it (a normal SAE source named `planted-output`); returns its SourceInfo."""
    from autointerp.collect.collector import CollectConfig, collect
    from autointerp.store.activations import get_source

    write_planted_sae(folder, subject, cfg.families, cfg.layer)
    collect(
        store,
        CollectConfig(
            model=subject.name, features=f"sae:{folder}", tokens=cfg.tokens, context_len=cfg.context_len,
            source=SOURCE, batch_size=8, chunk_tokens=cfg.tokens,
        ),
        subject=subject,
        progress=False,
    )
    with store.reading() as con:
        return get_source(con, SOURCE)


def lens_rows(subject: SubjectModel, source: Any, cfg: PlantedOutputConfig) -> list[dict[str, Any]]:
    """Each feature's top promoted tokens by the logit lens, the share of the top `top_k` in its family, and
    whether it names its family: among the top LENS_DEPTH tokens, a token of its own family comes before any
    token of another family."""
    from autointerp.directions import feature_directions
    from autointerp.output_evidence import logit_lens

    directions = feature_directions(source, list(range(len(cfg.families))), subject)
    rows = []
    for name, effects in zip(cfg.families, logit_lens(subject, directions.vectors, k=LENS_DEPTH)):
        tokens = [e.token for e in effects.promoted]
        first = {f: next((i for i, t in enumerate(tokens) if in_family(t, FAMILIES[f][1])), None) for f in cfg.families}
        own = first[name]
        named = own is not None and all(r is None or own < r for f, r in first.items() if f != name)
        top = tokens[: cfg.top_k]
        rows.append({
            "family": name, "promoted": top, "in_family": sum(in_family(t, FAMILIES[name][1]) for t in top) / len(top),
            "first_family_rank": own, "named": named,
        })
    return rows


async def score_families(
    subject: SubjectModel, source: Any, max_activations: dict[int, float], cfg: PlantedOutputConfig
) -> tuple[list[dict[str, Any]], list[float]]:
    """The true label and every other family's label (decoys) of each feature, by the output scorer; and the
    seconds of steering (calibration and generation) per feature."""
    from autointerp.records import Explanation
    from autointerp.scoring.output import OutputContext, OutputScorer

    context = OutputContext(source, subject)
    scorer = OutputScorer(None, context, **cfg.scorer_options)
    rows, per_feature = [], []
    for feature, name in enumerate(cfg.families):
        examples = output_examples(source.name, feature, max_activations[feature])
        started = time.perf_counter()
        await asyncio.to_thread(scorer.steered_text, feature, examples.max_activation)
        per_feature.append(time.perf_counter() - started)
        for other in cfg.families:
            label = FAMILIES[other][0]
            scores = await scorer.score(Explanation(source.name, feature, label), examples)
            best = report.headline("output", scores)
            rows.append({
                "family": name, "label_family": other, "kind": "true" if other == name else "decoy", "label": label,
                "value": best.value, "ci_low": best.ci_low, "ci_high": best.ci_high, "n": best.n,
                "strength": best.details["steering"]["strength"], "kl": best.details["steering"]["kl"],
                "capped": best.details["steering"]["capped"],
            })
    return rows, per_feature


def output_examples(source: str, feature: int, max_activation: float):
    """Examples holding only what the output scorer reads: the feature and its max activation (no contexts)."""
    from autointerp.records import FeatureExamples, Split

    return FeatureExamples(source, feature, max_activation, Split(), Split(), Split(), [], {}, 0)


def summarize(rows: list[dict[str, Any]], families: tuple[str, ...], n_boot: int) -> dict[str, Any]:
    true = {r["family"]: r["value"] for r in rows if r["kind"] == "true"}
    decoys = {f: [r["value"] for r in rows if r["family"] == f and r["kind"] == "decoy"] for f in families}
    pairs_true = [true[f] for f in families for _ in decoys[f]]
    pairs_decoy = [d for f in families for d in decoys[f]]
    win = report.win_rate(pairs_true, pairs_decoy)
    best = sum(all(true[f] > d for d in decoys[f]) for f in families)
    lo, hi = report.wilson_interval(best, len(families))
    auroc = report.grouped_auroc_with_ci([true[f] for f in families], [decoys[f] for f in families], n_boot)
    return {
        "win_rate": win["rate"], "win_rate_ci": (win["ci_low"], win["ci_high"]), "n_pairs": win["n"],
        "true_best": best / len(families), "true_best_ci": (lo, hi), "n_features": len(families),
        "auroc": auroc["auroc"], "auroc_ci": (auroc["ci_low"], auroc["ci_high"]),
    }


def run_planted_output(db: str | Path, cfg: PlantedOutputConfig = PlantedOutputConfig()) -> PlantedOutputResult:
    """Build the planted SAE source in `db` (its folder beside it), run the logit lens and the output scorer."""
    from autointerp.collect.models import load_subject_model
    from autointerp.store import Store
    from autointerp.store.activations import feature_stats

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    subject = load_subject_model("smollm2", device=cfg.device)
    seconds["load model"] = time.perf_counter() - started
    db = Path(db)
    with Store(db, create=True) as store:
        started = time.perf_counter()
        source = build_planted_source(store, db.parent / "planted-output-sae", subject, cfg)
        with store.reading() as con:
            max_act = {f: feature_stats(con, source.source_id, f).max_value for f in range(len(cfg.families))}
        seconds["build and collect"] = time.perf_counter() - started
    started = time.perf_counter()
    lens = lens_rows(subject, source, cfg)
    seconds["logit lens"] = time.perf_counter() - started
    started = time.perf_counter()
    rows, per_feature = asyncio.run(score_families(subject, source, max_act, cfg))
    seconds["output scorer"] = time.perf_counter() - started
    seconds["steering per feature"] = float(np.mean(per_feature))
    seconds["scoring per label"] = (seconds["output scorer"] - sum(per_feature)) / max(1, len(rows))
    return PlantedOutputResult(
        cfg, str(subject.device), lens, rows, summarize(rows, cfg.families, cfg.n_bootstrap),
        {k: round(v, 2) for k, v in seconds.items()},
    )


def markdown(result: PlantedOutputResult) -> str:
    cfg, s = result.config, result.summary
    opts = cfg.scorer_options
    lines = [
        "## Planted output check",
        "",
        f"{len(cfg.families)} SAE latents at layer {cfg.layer} whose decoder rows are the mean unembedding of a token "
        f"family, collected over {cfg.tokens} tokens as a SAELens source. Logit lens: share of the top {cfg.top_k} "
        f"promoted tokens in the family, and whether a family token comes before any other family's token among the "
        f"top {LENS_DEPTH} ({sum(r['named'] for r in result.lens)} of {len(result.lens)} do). Output scorer ({opts.get('n_prompts')} neutral prompts, "
        f"{opts.get('max_new_tokens')} new tokens, device {result.device}): delta_cosine of the true label and of "
        "every other family's label (decoys) on the same continuations.",
        "",
        report.markdown_table([
            {"family": r["family"], "top promoted tokens": " ".join(repr(t) for t in r["promoted"]),
             f"in family (top {cfg.top_k})": report.fmt(r["in_family"], 2),
             "first family token at": "-" if r["first_family_rank"] is None else r["first_family_rank"] + 1,
             "names its family": "yes" if r["named"] else "no"}
            for r in result.lens
        ]),
        "",
        report.markdown_table([
            {"feature": r["family"], "label": r["label"], "kind": r["kind"],
             "delta_cosine (95% CI)": report.fmt_ci(r["value"], r["ci_low"], r["ci_high"], digits=2), "n": r["n"],
             "strength": report.fmt(r["strength"], 3), "KL": report.fmt(r["kl"], 2) + (" (capped)" if r["capped"] else "")}
            for r in result.scores
        ]),
        "",
        f"True label beats a decoy: {report.fmt_ci(s['win_rate'], *s['win_rate_ci'], digits=2)} of {s['n_pairs']} "
        f"feature-decoy pairs (Wilson CI); true label beats every decoy: "
        f"{report.fmt_ci(s['true_best'], *s['true_best_ci'], digits=2)} of {s['n_features']} features; AUROC true vs "
        f"decoys {report.fmt_ci(s['auroc'], *s['auroc_ci'], digits=2)} (bootstrap over features).",
        "Seconds: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()) + ".",
    ]
    return "\n".join(lines)
