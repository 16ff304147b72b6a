"""Recording activations: subject models, feature sources (neurons, SAEs), corpora, and the collector."""

from autointerp.collect.collector import (
    CollectConfig,
    CollectReport,
    LayerReader,
    collect,
)
from autointerp.collect.corpora import iter_documents
from autointerp.collect.features import load_feature_source, load_sae
from autointerp.collect.models import SubjectModel, load_subject_model
from autointerp.collect.ray_collect import collect_on_ray

__all__ = [
    "CollectConfig",
    "CollectReport",
    "LayerReader",
    "SubjectModel",
    "collect",
    "collect_on_ray",
    "iter_documents",
    "load_feature_source",
    "load_sae",
    "load_subject_model",
]
