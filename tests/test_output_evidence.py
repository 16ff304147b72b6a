"""Output evidence on the bundled model: the logit lens and amplification agree with direct computations through
the model's own modules."""

import pytest
import torch

from autointerp.collect.models import load_subject_model
from autointerp.directions import feature_directions
from autointerp.errors import AutointerpError
from autointerp.output_evidence import logit_lens
from autointerp.store.activations import SourceInfo

LAYER = 3


@pytest.fixture(scope="module")
def subject():
    return load_subject_model("smollm2", device="cpu", dtype="float32")


def neuron_source(width=1536):
    return SourceInfo(1, "s", "smollm2", None, LAYER, "neurons", width, 32, {"features": "neurons"}, "ready")


def test_logit_lens_equals_the_models_own_final_norm_and_head(subject):
    vectors = feature_directions(neuron_source(), [7, 300], subject).vectors
    effects = logit_lens(subject, vectors, k=5)
    with torch.no_grad():
        # The model's final RMSNorm of the direction alone, then its head: the lens up to the norm's 1/rms scale.
        direct = subject.model.lm_head(subject.model.model.norm(vectors))
        rms = vectors.pow(2).mean(-1, keepdim=True).add(subject.model.config.rms_norm_eps).sqrt()
        direct = direct * rms
    assert len(effects) == 2
    for row, got in zip(direct, effects):
        assert [e.token_id for e in got.promoted] == row.topk(5).indices.tolist()
        assert [e.token_id for e in got.suppressed] == (-row).topk(5).indices.tolist()
        torch.testing.assert_close(torch.tensor([e.value for e in got.promoted]), row.topk(5).values, rtol=1e-4, atol=1e-4)
        assert got.promoted[0].value > 0 > got.suppressed[0].value
        assert got.promoted[0].token == subject.tokenizer.decode([got.promoted[0].token_id])


def test_logit_lens_refuses_vectors_of_the_wrong_size(subject):
    with pytest.raises(AutointerpError, match=r"shape \[n, 576\]"):
        logit_lens(subject, torch.zeros(2, 10))
