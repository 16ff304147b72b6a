"""Plain data passed between the pipeline's stages: examples, labels, scores."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from autointerp.ranking import unreliable_reason


@dataclass
class Example:
    """One context window with the feature's activation at every token (0.0 where it does not fire).

    A negative of a dense feature may be a window cut from an active context (`window_start` set), where the
    feature stays at most `near_zero` x its max.
    """

    context_id: int
    tokens: list[str]
    activations: list[float]
    kind: str  # top | quantile | random_negative | hard_negative
    # band of the feature's per-context max, for positives: 0 .. n_quantiles - 1 are equal-count bands, and
    # n_quantiles is the band of the top-ranked contexts (kind "top"), above all the others
    quantile: int | None = None
    window_start: int | None = None  # set for a window cut from an active context: where it starts there

    @property
    def max_value(self) -> float:
        return max(self.activations, default=0.0)

    @property
    def is_positive(self) -> bool:
        return self.kind in ("top", "quantile")


@dataclass
class Split:
    positives: list[Example] = field(default_factory=list)
    random_negatives: list[Example] = field(default_factory=list)
    hard_negatives: list[Example] = field(default_factory=list)

    def all(self) -> list[Example]:
        return [*self.positives, *self.random_negatives, *self.hard_negatives]

    def context_ids(self) -> set[int]:
        return {e.context_id for e in self.all()}


@dataclass
class TokenEffect:
    token: str  # the token decoded on its own, as a reader sees it
    token_id: int
    value: float


@dataclass
class OutputEffects:
    promoted: list[TokenEffect]  # largest value first
    suppressed: list[TokenEffect]  # most negative value first


@dataclass
class OutputEvidence:
    """What a feature does to the next-token prediction (`autointerp.output_evidence`), as stored.

    logit_lens: its direction through the final norm and unembedding (value: logit); amplification: the mean
    change in next-token probability when it is amplified on neutral prompts. Either is None until computed.
    `provenance` holds each computed method's settings (model, layer, factor, prompt-file hash, ...).
    """

    source: str
    feature: int
    logit_lens: OutputEffects | None = None
    amplification: OutputEffects | None = None
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FeatureExamples:
    """A feature's evidence, split so that nothing shown to the explainer is used to score it.

    train: what the explainer sees (top + quantile positives; a few hard negatives for contrastive prompts).
    valid: for choosing among candidate labels (best-of-k). test: for the reported scores only.
    """

    source: str
    feature: int
    max_activation: float
    train: Split
    valid: Split
    test: Split
    characteristic_tokens: list[str]
    sampling_config: dict[str, Any]
    seed: int
    notes: list[str] = field(default_factory=list)  # e.g. "only 7 of 20 hard negatives found"
    output: OutputEvidence | None = None  # stored output evidence, for the output and combined explainer prompts


@dataclass
class Explanation:
    source: str
    feature: int
    label: str
    author: str = "llm"  # llm | human | baseline | import
    explainer_model: str | None = None
    prompt_name: str | None = None
    prompt_hash: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemJudgement:
    """One judged item of a scorer and the answer it got, kept so any metric can be recomputed later.

    Detection and fuzzing: truth 1/0, prediction 1/0 (None: unparsed), probability P(1) from logprobs (None
    without). Embedding: probability is the label-window cosine. Simulation: one item per context with its
    per-token true and predicted activations (None where a token got no prediction). `group` is the item's
    group for subsets (positives | random_negatives | hard_negatives; fuzzing's decoys on positives:
    misplaced); `kind` and `quantile` are the context's, from the sampler.
    """

    scorer: str
    item: int
    context_id: int
    group: str
    kind: str
    quantile: int | None = None
    truth: int | None = None
    prediction: int | None = None
    probability: float | None = None
    true_activations: list[float] | None = None
    predicted_activations: list[float | None] | None = None


@dataclass
class Score:
    """One metric of one scorer on one subset of the test split, with its sample size and 95% CI.

    `items` are the scorer's per-item judgements (the same list on every row of one scorer's result); they
    are stored in their own table beside the scores and are not loaded back with a label.
    `imported`: the value is a label file's claim, not measured here. `unreliable` (derived, never stored):
    why the score may not rank labels (see `autointerp.ranking`), None when it may.
    """

    scorer: str
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    subset: str = "all"  # all | random_negatives | hard_negatives | positives
    split: str = "test"
    scorer_model: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    items: list[ItemJudgement] | None = field(default=None, repr=False, compare=False)
    imported: bool = False
    unreliable: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        self.unreliable = unreliable_reason(
            self.value, self.n, int((self.details or {}).get("n_unparsed") or 0), self.imported
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields a stored copy needs: not `items` (their own table) nor the derived `unreliable`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name != "items"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Score:
        """The inverse of `to_dict`; derived keys (`unreliable`) are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.init and f.name in data})
