"""Choose a feature's examples and split them so that nothing shown to the explainer is used to score it.

- positives: the top-ranked contexts (by per-context max activation), dealt by rank between train, test
  and valid (interleaved, so each split holds the feature's strongest behaviour), plus quantile-stratified
  ones (strata = equal-count bins of the per-context max) for each split;
- train also gets a few hard negatives for contrastive prompts; valid (best-of-k selection) and test
  (reported scores) get random negatives (contexts where the feature never fires) and hard negatives
  (contexts holding the feature's characteristic tokens where it stays silent), kept apart;
- characteristic tokens (and so the train hard negatives) come from the train positives alone: nothing the
  explainer sees depends on the valid or test split;
- a dense feature that leaves too few silent contexts gets negatives cut from active contexts: windows of
  `negative_window` tokens where it stays at most `near_zero` x its max.

Splits are disjoint by context id and by near-duplicate text: two contexts whose normalised text, or whose
window of `2 * WINDOW_HALF` tokens around the max-activating token, is the same never both appear (the
first one in priority order is kept). Everything is deterministic for a (seed, feature).

`sample` keeps, per Store and source, the source's tokens in memory (dictionary-encoded, ~20 bytes per
token; loaded on first use), so a job that samples thousands of features pays that load once. A source
changed after that needs a new Store object. Keep `store.con` open between calls: reopening the file costs
more than a sample. For a run of features, `sample_many` gives the same results faster (it reads ahead).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from autointerp.config import SamplingConfig
from autointerp.errors import AutointerpError
from autointerp.records import Example, FeatureExamples, OutputEvidence, Split
from autointerp.store import sampling_queries as q
from autointerp.store.activations import (
    SourceInfo,
    feature_stats,
    get_source,
    group_maxima,
)
from autointerp.store.db import Store
from autointerp.store.output_evidence_queries import load_output_evidence

WINDOW_HALF = 4
POSITIVE_OVERSAMPLING = 3  # candidates fetched per positive wanted, to survive deduplication
SPLITS = ("test", "valid", "train")  # the order splits are served in when examples are scarce
HARD_NEGATIVE_OCCURRENCES = 512  # occurrences of each characteristic token looked at for hard negatives


class TooFewActivations(AutointerpError):
    """The feature fires in too few distinct contexts to label and score it honestly."""

    def __init__(self, source: str, feature: int, n_active: int, n_distinct: int, needed: int):
        self.n_active, self.n_distinct, self.needed = n_active, n_distinct, needed
        distinct = "" if n_distinct == n_active else f" ({n_distinct} with distinct text)"
        super().__init__(
            f"feature {feature} of source {source!r} fires in {n_active} contexts{distinct}; at least {needed} "
            "are needed to label it: skip it, collect more tokens, or lower min_active_contexts"
        )


@dataclass
class _Source:
    info: SourceInfo
    tokens: q.SourceTokens
    feature_tokens: np.ndarray  # active-token count per feature


@dataclass
class _FeatureData:
    """Where the feature fires: one entry per active context, sorted by context id."""

    ids: np.ndarray
    max_value: np.ndarray
    max_pos: np.ndarray
    rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # all (context_id, pos, value), when read at once
    output: OutputEvidence | None = None  # its stored output evidence (read here: in sample_many's reader thread)


_SOURCES: weakref.WeakKeyDictionary[Store, dict[str, _Source]] = weakref.WeakKeyDictionary()
# Features with at most this many activations are read in one query and their per-context maxima computed
# here; denser ones read feature_context_max, then only the chosen contexts' activations.
READ_ALL_ROWS_BELOW = 100_000


def _load_source(store: Store, name: str) -> _Source:
    cached = _SOURCES.setdefault(store, {})
    if name not in cached:
        info = get_source(store.con, name)
        if info.status != "ready":
            raise AutointerpError(
                f"source {name!r} is not finalized (status {info.status!r}); finish or resume its collection first"
            )
        cached[name] = _Source(
            info, q.load_source_tokens(store.con, info.source_id), q.feature_token_counts(store.con, info.source_id)
        )
    return cached[name]


def _per_context_max(ctx: np.ndarray, pos: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What feature_context_max holds for one feature, from its rows sorted by (context, pos)."""
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]]) if len(ctx) else np.zeros(0, dtype=np.int64)
    maxima, max_pos, _ = group_maxima(starts, pos, val)
    return ctx[starts], maxima, max_pos


def _feature_data(con, src: _Source, source: str, feature: int) -> _FeatureData:
    n_rows = int(src.feature_tokens[feature]) if 0 <= feature < len(src.feature_tokens) else 0
    if n_rows == 0:
        feature_stats(con, src.info.source_id, feature)  # raises the error that names the valid features
    output = load_output_evidence(con, src.info.source_id, source, [feature]).get(feature)
    if n_rows <= READ_ALL_ROWS_BELOW:
        rows = q.feature_rows(con, src.info.source_id, feature)
        return _FeatureData(*_per_context_max(*rows), rows=rows, output=output)
    return _FeatureData(*q.feature_context_maxes(con, src.info.source_id, feature), rows=None, output=output)


class _Picker:
    """Hands out contexts at most once and refuses near-duplicates of anything already handed out.

    Keys are hashes of token sequences after lowercasing and removing whitespace inside each token: the
    whole context, and (for positives) the window of 2 * WINDOW_HALF tokens around the max-activating token.
    """

    def __init__(self, tokens: q.SourceTokens):
        self.tokens = tokens
        self.used_ids: set[int] = set()
        self.text_keys: set[int] = set()
        self.window_keys: set[int] = set()

    def take(self, context_ids: np.ndarray, max_pos: np.ndarray | None = None, limit: int | None = None) -> list[int]:
        """Indices (into context_ids, in order) of the candidates accepted, at most `limit` of them."""
        context_ids = np.asarray(context_ids, dtype=np.int64)
        if limit is not None and len(context_ids) > 4 * limit + 16:  # most are accepted: hash only a head first
            head = 4 * limit + 16
            accepted = self.take(context_ids[:head], None if max_pos is None else max_pos[:head], limit)
            if len(accepted) < limit:
                rest = self.take(context_ids[head:], None if max_pos is None else max_pos[head:], limit - len(accepted))
                accepted += [head + i for i in rest]
            return accepted
        rows = self.tokens.rows(context_ids)
        texts = self.tokens.text_hash[rows].tolist()
        windows = (
            self.tokens.window_hash(rows, np.asarray(max_pos, dtype=np.int64), WINDOW_HALF).tolist()
            if max_pos is not None
            else [None] * len(texts)
        )
        accepted: list[int] = []
        for i, (cid, text, window) in enumerate(zip(context_ids.tolist(), texts, windows)):
            if limit is not None and len(accepted) >= limit:
                break
            if cid in self.used_ids or text in self.text_keys or window in self.window_keys:
                continue
            self.used_ids.add(cid)
            self.text_keys.add(text)
            if window is not None:
                self.window_keys.add(window)
            accepted.append(i)
        return accepted


def _apportion(wanted: dict[str, int], available: int) -> dict[str, int]:
    """Shrink the wanted counts to sum to `available`: one for each split that wants any (while they last),
    the rest in proportion to what is still wanted (largest remainder)."""
    counts = {k: 0 for k in wanted}
    for k in ("top", *SPLITS):
        if wanted.get(k, 0) > 0 and sum(counts.values()) < available:
            counts[k] = 1
    rest, still = available - sum(counts.values()), {k: wanted[k] - counts[k] for k in wanted}
    total = sum(still.values())
    if rest <= 0 or total <= 0:
        return counts
    quotas = {k: v * rest / total for k, v in still.items()}
    shares = {k: math.floor(x) for k, x in quotas.items()}
    for k in sorted(quotas, key=lambda k: shares[k] - quotas[k])[: rest - sum(shares.values())]:
        shares[k] += 1
    return {k: counts[k] + shares[k] for k in wanted}


def _spread(count: int, n_strata: int) -> list[int]:
    """count split over strata as evenly as possible, the remainder going to the highest strata."""
    base, extra = divmod(count, n_strata)
    return [base + (1 if s >= n_strata - extra else 0) for s in range(n_strata)]


@dataclass
class _Positives:
    top: dict[str, list[int]]  # split -> indices into the feature's active-context arrays, by rank
    dealt: dict[str, list[tuple[int, int]]]  # split -> (index, stratum) of its quantile positives
    n_strata: int
    notes: list[str]


TOP_ORDER = ("train", "test", "valid")  # who gets a top-ranked context when the shares tie (train the first)


def _deal_top(n: int, wanted: dict[str, int]) -> list[str]:
    """The split of each of n top-ranked contexts, in rank order: interleaved in proportion to what each split
    wants (the first to train), so every split holds contexts from the whole top range."""
    total = sum(wanted.values())
    got = dict.fromkeys(TOP_ORDER, 0)
    out = []
    for r in range(min(n, total)):
        open_ = [s for s in TOP_ORDER if got[s] < wanted.get(s, 0)]
        split = open_[0] if r == 0 else max(open_, key=lambda s: wanted[s] * (r + 1) / total - got[s])  # first of ties
        got[split] += 1
        out.append(split)
    return out


def _choose_positives(
    picker: _Picker, ids: np.ndarray, maxv: np.ndarray, maxpos: np.ndarray, cfg: SamplingConfig, rng, source: str, feature: int
) -> _Positives:
    n = len(ids)
    n_strata = max(1, min(cfg.n_quantiles, n))
    asc = np.argsort(maxv, kind="stable")  # ids are ascending, so ties stay in context order
    stratum = np.empty(n, dtype=np.int64)
    stratum[asc] = (np.arange(n) * n_strata) // n
    desc = asc[::-1]
    top_wanted = top_counts(cfg)
    wanted = {
        "top": sum(top_wanted.values()),
        "train": cfg.n_train_quantile,
        "valid": cfg.n_valid_positives - top_wanted["valid"],
        "test": cfg.n_test_positives - top_wanted["test"],
    }
    total = sum(wanted.values())

    def distinct(order: np.ndarray) -> list[int]:
        return [int(order[k]) for k in picker.take(ids[order], maxpos[order])]

    notes = []
    if n <= POSITIVE_OVERSAMPLING * total:
        unique = distinct(desc)
        if len(unique) < cfg.min_active_contexts:
            raise TooFewActivations(source, feature, n, len(unique), cfg.min_active_contexts)
        counts = wanted if len(unique) >= total else _apportion(wanted, len(unique))
        if counts is not wanted:
            notes.append(
                f"only {len(unique)} distinct active contexts (wanted {total}): "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
            )
        top = unique[: counts["top"]]
        rest = [unique[i] for i in rng.permutation(len(unique) - len(top)) + len(top)]
        strata = [[i for i in rest if stratum[i] == s] for s in range(n_strata)]
    else:
        counts = wanted
        top_pool = desc[: POSITIVE_OVERSAMPLING * wanted["top"]]
        top = distinct(top_pool)[: wanted["top"]]
        in_top_pool = np.zeros(n, dtype=bool)
        in_top_pool[top_pool] = True
        per_stratum = max(_spread(wanted["train"] + wanted["valid"] + wanted["test"], n_strata))
        drawn = []
        for s in range(n_strata):
            members = np.flatnonzero((stratum == s) & ~in_top_pool)
            size = min(len(members), POSITIVE_OVERSAMPLING * per_stratum + 5)
            drawn.append(rng.choice(members, size=size, replace=False) if size else np.zeros(0, dtype=np.int64))
        accepted = np.array(distinct(np.concatenate(drawn)), dtype=np.int64)  # in stratum order, as one pass each
        strata = [accepted[stratum[accepted] == s].tolist() for s in range(n_strata)]

    top_of: dict[str, list[int]] = {split: [] for split in SPLITS}
    for i, split in zip(top, _deal_top(len(top), top_wanted)):
        top_of[split].append(i)
    dealt: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    next_in = [0] * n_strata
    for split in SPLITS:
        for s, need in enumerate(_spread(counts[split], n_strata)):
            take = strata[s][next_in[s] : next_in[s] + need]
            next_in[s] += len(take)
            dealt[split] += [(i, s) for i in take]
        for s in reversed(range(n_strata)):  # a short stratum is made up from the others, highest first
            missing = counts[split] - len(dealt[split])
            if missing <= 0:
                break
            take = strata[s][next_in[s] : next_in[s] + missing]
            next_in[s] += len(take)
            dealt[split] += [(i, s) for i in take]
        if len(dealt[split]) < counts[split]:
            notes.append(f"only {len(dealt[split])} of {counts[split]} {split} quantile positives found")
    return _Positives(top=top_of, dealt=dealt, n_strata=n_strata, notes=notes)


def _characteristic_tokens(tokens: q.SourceTokens, ctx: np.ndarray, pos: np.ndarray, val: np.ndarray, k: int) -> list[int]:
    """Codes of the tokens most specific to the feature in the given activations (the train positives').

    Specificity is weighted PMI: a token's share of the activation mass times the log of that share over the
    token's share of the corpus. A token that fires often but weakly and is everywhere (whitespace, commas)
    ranks low; one that takes much of the mass while rare in the corpus ranks high. Tokens must fire in two
    contexts or more when there are five or more contexts.
    """
    keep_rows = val > 0
    if k <= 0 or not keep_rows.any():
        return []
    ctx, pos, val = ctx[keep_rows], pos[keep_rows], val[keep_rows].astype(np.float64)
    at = tokens.codes[tokens.offsets[tokens.rows(ctx)] + pos]
    codes, inverse = np.unique(at, return_inverse=True)
    mass = np.bincount(inverse, weights=val, minlength=len(codes))
    pairs = np.unique(inverse.astype(np.int64) * (int(ctx.max()) + 1) + ctx)
    n_contexts = np.bincount(pairs // (int(ctx.max()) + 1), minlength=len(codes))
    share = mass / mass.sum()
    corpus = tokens.token_counts[codes] / max(tokens.n_tokens, 1)
    lift = share / corpus
    keep = (lift > 1) & (n_contexts >= (2 if len(np.unique(ctx)) >= 5 else 1))
    score = np.where(keep, share * np.log(np.where(keep, lift, 1.0)), -np.inf)
    order = np.lexsort((codes, -score))
    return [int(codes[i]) for i in order[:k] if np.isfinite(score[i])]


def _not_active(candidates: np.ndarray, active_sorted: np.ndarray) -> np.ndarray:
    if len(active_sorted) == 0:
        return candidates
    at = np.minimum(np.searchsorted(active_sorted, candidates), len(active_sorted) - 1)
    return candidates[active_sorted[at] != candidates]


@dataclass
class _Negative:
    context_id: int
    window: tuple[int, np.ndarray] | None = None  # (start, activations) of a window cut from an active context


def _deal(accepted: list[_Negative], wanted: dict[str, int]) -> dict[str, list[_Negative]]:
    """Deal negatives, in order, to the splits in SPLITS order until each has what it wants."""
    out: dict[str, list[_Negative]] = {}
    for split in (s for s in SPLITS if s in wanted):
        out[split], accepted = accepted[: wanted[split]], accepted[wanted[split] :]
    return out


def _take_negatives(picker: _Picker, candidates: np.ndarray, wanted: dict[str, int]) -> dict[str, list[_Negative]]:
    accepted = [_Negative(int(candidates[k])) for k in picker.take(candidates, limit=sum(wanted.values()))]
    return _deal(accepted, wanted)


def _random_negatives(picker: _Picker, tokens: q.SourceTokens, active: np.ndarray, wanted: dict[str, int], rng):
    n_all, need = len(tokens.context_ids), sum(wanted.values())
    if need == 0 or n_all == 0:
        return {split: [] for split in wanted}
    draw = rng.choice(n_all, size=min(n_all, 4 * need + 16), replace=False)
    picked = _take_negatives(picker, _not_active(tokens.context_ids[draw], active), wanted)
    if sum(map(len, picked.values())) < need:  # a feature firing almost everywhere: walk the full complement
        rest = _not_active(tokens.context_ids, active)
        more = _take_negatives(
            picker, rest[rng.permutation(len(rest))], {s: wanted[s] - len(picked[s]) for s in wanted}
        )
        picked = {s: picked[s] + more[s] for s in wanted}
    return picked


def _hard_negatives(picker: _Picker, active: np.ndarray, characteristic: list[int], wanted: dict[str, int], rng):
    candidates = _not_active(picker.tokens.contexts_holding(characteristic, HARD_NEGATIVE_OCCURRENCES, rng), active)
    return _take_negatives(picker, candidates[rng.permutation(len(candidates))], wanted)


def _silent_windows(
    picker: _Picker, candidates: np.ndarray, rows, cfg: SamplingConfig, threshold: float, centre: list[int] | None,
    wanted: dict[str, int], rng,
) -> dict[str, list[_Negative]]:
    """Negatives cut from active contexts: windows of cfg.negative_window tokens where every activation is at
    most `threshold`, at a random place or (centre given) around one of those tokens. One per context."""
    ctx, pos, val = rows
    order = np.argsort(ctx, kind="stable")
    ctx, pos, val = ctx[order], pos[order], val[order]
    tokens, found = picker.tokens, []
    for cid in candidates.tolist():
        row = int(tokens.rows(cid))
        start, end = int(tokens.offsets[row]), int(tokens.offsets[row + 1])
        n = end - start
        length = min(cfg.negative_window, n)
        if length == 0:
            continue
        a, b = np.searchsorted(ctx, cid), np.searchsorted(ctx, cid, side="right")
        acts = np.zeros(n, dtype=np.float32)
        acts[pos[a:b]] = val[a:b]
        loud = np.r_[0, np.cumsum(acts > threshold)]
        quiet = loud[length:] - loud[:-length] == 0  # quiet[s]: the window starting at s is silent
        if centre is None:
            starts = np.flatnonzero(quiet)
        else:
            holding = np.flatnonzero(np.isin(tokens.codes[start:end], centre))
            starts = np.clip(holding - length // 2, 0, n - length)
            starts = starts[quiet[starts]]
        if len(starts):
            s = int(starts[rng.integers(len(starts))])
            found.append(_Negative(cid, (s, acts[s : s + length])))
    accepted = picker.take(np.array([f.context_id for f in found], dtype=np.int64), limit=sum(wanted.values()))
    return _deal([found[i] for i in accepted], wanted)


def _window_negatives(
    con, src: _Source, feature: int, data: _FeatureData, picker: _Picker, cfg: SamplingConfig, got: dict[str, list[_Negative]],
    wanted: dict[str, int], centre: list[int] | None, rng,
) -> dict[str, list[_Negative]]:
    """Make up a shortage of whole silent contexts with silent windows inside active ones (dense features)."""
    short = {s: wanted[s] - len(got[s]) for s in wanted}
    need = sum(short.values())
    if need <= 0 or cfg.negative_window <= 0:
        return got
    if centre is None:
        pool = data.ids
    else:
        holding = picker.tokens.contexts_holding(centre, HARD_NEGATIVE_OCCURRENCES, rng)
        pool = holding[np.isin(holding, data.ids)]
    pool = pool[~np.isin(pool, np.fromiter(picker.used_ids, dtype=np.int64, count=len(picker.used_ids)))]
    candidates = np.sort(pool[rng.permutation(len(pool))[: 4 * need + 16]])
    if data.rows is not None:
        inside = np.isin(data.rows[0], candidates)
        rows = tuple(r[inside] for r in data.rows)
    else:
        rows = q.feature_activations(con, src.info.source_id, feature, candidates.tolist())
    threshold = cfg.near_zero * float(data.max_value.max())
    more = _silent_windows(picker, candidates[rng.permutation(len(candidates))], rows, cfg, threshold, centre, short, rng)
    return {s: got[s] + more.get(s, []) for s in wanted}


def sample(store: Store, source: str, feature: int, cfg: SamplingConfig = SamplingConfig()) -> FeatureExamples:
    """The feature's examples, split into train / valid / test (see the module docstring)."""
    src = _load_source(store, source)
    return _examples(store.con, src, source, feature, _feature_data(store.con, src, source, feature), cfg)


def sample_many(
    store: Store, source: str, features: Iterable[int], cfg: SamplingConfig = SamplingConfig()
) -> Iterator[tuple[int, FeatureExamples | AutointerpError]]:
    """(feature, its examples or the AutointerpError that sampling it raised), in order; each result is what
    `sample` gives. While one feature's examples are chosen (Python), the next one's activations are read on
    a second cursor in a worker thread (DuckDB and most of NumPy release the GIL), so a run of features
    keeps both cores busy. Hold `store.con` open while iterating."""
    src = _load_source(store, source)
    con = store.con

    def finish(feature: int, reading: Future) -> tuple[int, FeatureExamples | AutointerpError]:
        try:
            return feature, _examples(con, src, source, feature, reading.result(), cfg)
        except AutointerpError as exc:
            return feature, exc

    # closed early, the generator leaves at most one read running: the with-block waits for it
    with con.cursor() as reader, ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-read") as pool:
        previous = None
        for feature in features:
            reading = (feature, pool.submit(_feature_data, reader, src, source, feature))
            if previous is not None:
                yield finish(*previous)
            previous = reading
        if previous is not None:
            yield finish(*previous)


@functools.lru_cache(maxsize=16)
def _config_items(cfg: SamplingConfig) -> tuple:
    return tuple(dataclasses.asdict(cfg).items())


def top_counts(cfg: SamplingConfig) -> dict[str, int]:
    """How many top-ranked contexts each split gets: n_train_top, and top_share of the valid / test positives."""
    valid, test = (math.floor(cfg.top_share * n + 0.5) for n in (cfg.n_valid_positives, cfg.n_test_positives))
    return {"train": cfg.n_train_top, "valid": valid, "test": test}


def _examples(con, src: _Source, source: str, feature: int, data: _FeatureData, cfg: SamplingConfig) -> FeatureExamples:
    tokens = src.tokens
    ids, maxv, maxpos = data.ids, data.max_value, data.max_pos
    if len(ids) < cfg.min_active_contexts:
        raise TooFewActivations(source, feature, len(ids), len(ids), cfg.min_active_contexts)

    rng = np.random.default_rng([cfg.seed, feature])
    picker = _Picker(tokens)
    positives = _choose_positives(picker, ids, maxv, maxpos, cfg, rng, source, feature)
    notes = list(positives.notes)

    def ids_of(split: str) -> list[int]:
        return [int(ids[i]) for i in positives.top[split]] + [int(ids[i]) for i, _ in positives.dealt[split]]

    positive_ids = [c for split in SPLITS for c in ids_of(split)]
    act_ctx, act_pos, act_val = data.rows if data.rows is not None else q.feature_activations(
        con, src.info.source_id, feature, positive_ids
    )
    wanted_rows = np.isin(act_ctx, positive_ids)
    act_ctx, act_pos, act_val = act_ctx[wanted_rows], act_pos[wanted_rows], act_val[wanted_rows]
    # what the explainer sees comes from the train split alone: characteristic tokens pick the train hard negatives
    in_train = np.isin(act_ctx, ids_of("train"))
    characteristic_codes = _characteristic_tokens(
        tokens, act_ctx[in_train], act_pos[in_train], act_val[in_train], cfg.n_characteristic_tokens
    )
    characteristic = [str(tokens.vocab[c]) for c in characteristic_codes]

    def filled(kind: str, got: dict[str, list[_Negative]], wanted: dict[str, int], centre: list[int] | None):
        whole, asked = sum(map(len, got.values())), sum(wanted.values())
        if whole < asked and (centre is None or centre):
            got = _window_negatives(con, src, feature, data, picker, cfg, got, wanted, centre, rng)
        found = sum(map(len, got.values()))
        if found > whole:
            notes.append(
                f"{found - whole} of the {found} {kind} negatives are windows of {cfg.negative_window} tokens inside "
                f"active contexts where the feature stays at most {cfg.near_zero:g} x its max (it fires in "
                f"{len(ids)} of {len(tokens.context_ids)} contexts)"
            )
        if found < asked:
            why = f" (contexts holding {characteristic} where the feature is silent)" if kind == "hard" else ""
            notes.append(f"only {found} of {asked} {kind} negatives found{why}")
        return got

    random_wanted = {"test": cfg.n_test_random_negatives, "valid": cfg.n_valid_random_negatives}
    randoms = filled("random", _random_negatives(picker, tokens, ids, random_wanted, rng), random_wanted, None)
    hard_wanted = {"test": cfg.n_test_hard_negatives, "valid": cfg.n_valid_hard_negatives, "train": cfg.n_train_hard_negatives}
    hards = filled(
        "hard", _hard_negatives(picker, ids, characteristic_codes, hard_wanted, rng), hard_wanted, characteristic_codes
    )

    activations: dict[int, list[tuple[int, float]]] = {}
    for c, p, v in zip(act_ctx.tolist(), act_pos.tolist(), act_val.tolist()):
        activations.setdefault(c, []).append((p, v))

    chosen = positive_ids + [n.context_id for got in (randoms, hards) for negs in got.values() for n in negs]
    texts = tokens.tokens_of(chosen)

    def example(context_id: int, kind: str, quantile: int | None = None) -> Example:
        toks = texts[context_id]
        values = [0.0] * len(toks)
        for p, v in activations.get(context_id, ()):
            values[p] = v
        return Example(context_id=context_id, tokens=toks, activations=values, kind=kind, quantile=quantile)

    def negative(n: _Negative, kind: str) -> Example:
        if n.window is None:
            return example(n.context_id, kind)
        start, values = n.window
        toks = texts[n.context_id][start : start + len(values)]
        return Example(n.context_id, toks, values.tolist(), kind, window_start=start)

    def positives_of(split: str) -> list[Example]:
        dealt = sorted(positives.dealt[split], key=lambda x: (-x[1], int(ids[x[0]])))
        top = [example(int(ids[i]), "top", positives.n_strata) for i in positives.top[split]]
        return top + [example(int(ids[i]), "quantile", s) for i, s in dealt]

    def negatives(got: dict[str, list[_Negative]], split: str, kind: str) -> list[Example]:
        return [negative(n, kind) for n in got.get(split, [])]

    return FeatureExamples(
        source=source,
        feature=feature,
        max_activation=float(maxv.max()),
        train=Split(positives=positives_of("train"), hard_negatives=negatives(hards, "train", "hard_negative")),
        valid=Split(
            positives=positives_of("valid"),
            random_negatives=negatives(randoms, "valid", "random_negative"),
            hard_negatives=negatives(hards, "valid", "hard_negative"),
        ),
        test=Split(
            positives=positives_of("test"),
            random_negatives=negatives(randoms, "test", "random_negative"),
            hard_negatives=negatives(hards, "test", "hard_negative"),
        ),
        characteristic_tokens=characteristic,
        sampling_config=dict(_config_items(cfg)),
        seed=cfg.seed,
        notes=notes,
        output=data.output,
    )
