"""Checks over a run's labels: near-duplicate labels given to different features (a sign the explainer
repeats a stock phrase instead of describing each feature)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from autointerp.embeddings import embed_texts

NEAR_DUPLICATE_COSINE = 0.9  # MiniLM cosine between two labels at or above which they say the same thing


@dataclass(frozen=True)
class NearDuplicate:
    feature_a: int
    feature_b: int
    label_a: str
    label_b: str
    similarity: float  # 1.0 for the same words


def _normal(label: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", label.lower()))


def near_duplicate_labels(labels: dict[int, str], threshold: float = NEAR_DUPLICATE_COSINE) -> list[NearDuplicate]:
    """Pairs of different features whose labels are the same words or embed at cosine >= threshold, closest first."""
    features = sorted(labels)
    if len(features) < 2:
        return []
    vectors = embed_texts([labels[f] for f in features])
    similarity = vectors @ vectors.T
    out = []
    for i, j in zip(*np.triu_indices(len(features), k=1)):
        a, b = features[i], features[j]
        same = _normal(labels[a]) == _normal(labels[b])
        if same or similarity[i, j] >= threshold:
            out.append(NearDuplicate(a, b, labels[a], labels[b], 1.0 if same else round(float(similarity[i, j]), 3)))
    return sorted(out, key=lambda d: (-d.similarity, d.feature_a, d.feature_b))
