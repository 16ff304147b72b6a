"""A small hand-made feature ("animal names") as FeatureExamples, built without a store or a model."""

from __future__ import annotations

from autointerp.records import Example, FeatureExamples, OutputEffects, OutputEvidence, Split, TokenEffect

ANIMALS = {"dog", "cat", "horse", "cow", "sheep", "rabbit", "goat", "pig", "duck", "fox", "owl", "deer"}

POSITIVE_SENTENCES = [
    "The farmer fed the horse before sunrise and then milked the cow",
    "A small dog barked at the mail carrier all morning",
    "Our cat sleeps on the warm windowsill every afternoon",
    "Two sheep wandered away from the flock near the river",
    "The rabbit hid under the hedge when the fox appeared",
    "She keeps a goat and a pig behind the old barn",
    "A duck paddled slowly across the quiet pond",
    "At night an owl called from the tall oak tree",
    "The deer crossed the road just ahead of our car",
    "My neighbour walks his dog past the bakery each day",
    "The cow grazed in the meadow beside the stone wall",
    "A curious cat watched the birds from the fence",
    "The horse pulled the cart up the steep hill",
    "We saw a fox slip through the garden gate",
    "The pig rolled happily in the mud by the trough",
    "Children fed bread to the duck at the park",
]
RANDOM_SENTENCES = [
    "The committee approved the annual budget on Tuesday",
    "Interest rates rose again after the central bank meeting",
    "Please save the file before closing the editor window",
    "The train to the city leaves from platform four",
    "He finished the report and sent it to his manager",
    "The concert was postponed because of the storm",
    "Add two cups of flour and stir until smooth",
    "The new software update fixes several security bugs",
    "Tax returns must be filed before the end of April",
    "The museum opens at nine and closes at five",
]
HARD_SENTENCES = [
    "He bought a hot dog at the stadium during the game",
    "Use the cat command to print the file to the terminal",
    "The stock market saw a bull run and then a bear market",
    "The rocking horse in the attic was covered in dust",
    "Run pig latin through the translator for fun",
    "The duck tape held the broken pipe together",
]


def _example(cid: int, sentence: str, kind: str, fires: bool) -> Example:
    words = sentence.split()
    tokens = [words[0], *(" " + w for w in words[1:])]
    acts = [(4.0 + (cid % 5)) if fires and t.strip().lower() in ANIMALS else 0.0 for t in tokens]
    return Example(context_id=cid, tokens=tokens, activations=acts, kind=kind)


def animal_feature(n_train: int = 8, n_valid: int = 3, n_test: int = 5) -> FeatureExamples:
    """Disjoint train / valid / test splits of the animal feature; context ids are unique across splits."""
    cid = iter(range(1000, 2000))
    pos = [_example(next(cid), s, "top", True) for s in POSITIVE_SENTENCES]
    rnd = [_example(next(cid), s, "random_negative", False) for s in RANDOM_SENTENCES]
    hard = [_example(next(cid), s, "hard_negative", False) for s in HARD_SENTENCES]
    a, b = n_train, n_train + n_valid
    return FeatureExamples(
        source="handmade",
        feature=7,
        max_activation=max(e.max_value for e in pos),
        train=Split(positives=pos[:a], hard_negatives=hard[:2]),
        valid=Split(positives=pos[a:b], random_negatives=rnd[:3], hard_negatives=hard[2:3]),
        test=Split(positives=pos[b : b + n_test], random_negatives=rnd[3:], hard_negatives=hard[3:]),
        characteristic_tokens=[" dog", " cat", " horse", " duck", " pig"],
        sampling_config={},
        seed=0,
    )


# Output evidence for the output and combined explainer prompts: a direction that promotes month names.
MONTHS = [" January", " February", " March", " April", " May", " June", " July", " August", " September"]
CODE = ["def", " import", "()", " return"]


def effects(promoted, suppressed, scale=1.0):
    return OutputEffects(
        [TokenEffect(t, 100 + i, scale * (9 - i)) for i, t in enumerate(promoted)],
        [TokenEffect(t, 200 + i, -scale * (9 - i)) for i, t in enumerate(suppressed)],
    )


def with_output(examples, amplification=True):
    examples.output = OutputEvidence(
        examples.source,
        examples.feature,
        logit_lens=effects(MONTHS, CODE),
        amplification=effects(MONTHS[:3], [" the", " a"], scale=0.01) if amplification else None,
        provenance={"logit_lens": {"model": "smollm2", "layer": 3}, "amplification": {"factor": 10.0}},
    )
    return examples
