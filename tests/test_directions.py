"""Feature write directions and steering on the bundled model: a neuron's direction is exactly what raising its
activation adds to its block's output, an SAE's is its decoder row, and steering adds a vector to that output."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from autointerp.directions import amplified, feature_directions, neutral_prompts, steering
from autointerp.errors import AutointerpError
from autointerp.store.activations import SourceInfo

LAYER = 3


def source(kind="neurons", config=None, width=1536):
    return SourceInfo(1, "s", "smollm2", None, LAYER, kind, width, 32, config or {"features": "neurons"}, "ready")


def block_output(subject, ids, neuron=None, delta=0.0):
    """Block LAYER's output as the next block receives it (a hook registered last sees every earlier hook's change)."""
    seen = []
    hooks = [subject.layer(LAYER).register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))]
    if neuron is not None:
        def bump(_module, inputs):
            x = inputs[0].clone()
            x[..., neuron] += delta
            return (x,)
        hooks.append(subject.mlp_out_proj(LAYER).register_forward_pre_hook(bump))
    try:
        with torch.no_grad():
            subject.model(ids)
        return seen[0]
    finally:
        for h in hooks:
            h.remove()


def test_a_neurons_direction_is_what_raising_it_adds_to_the_block_output(subject):
    ids = torch.tensor([subject.tokenizer("The river flows into the sea.")["input_ids"]])
    neuron, delta = 17, 2.5
    moved = block_output(subject, ids, neuron, delta) - block_output(subject, ids)
    direction = feature_directions(source(), [5, neuron], subject).vectors[1]
    torch.testing.assert_close(moved[0], (delta * direction).expand_as(moved[0]), rtol=1e-4, atol=1e-4)


def test_steering_adds_one_vector_per_sequence_to_the_block_output(subject):
    ids = torch.tensor([subject.tokenizer("Hello world, again")["input_ids"]] * 2)
    vectors = torch.randn(2, subject.d_model, generator=torch.Generator().manual_seed(0))
    with steering(subject, LAYER, vectors):
        steered = block_output(subject, ids)
    # atol: float32 rounding of the sum where the residual stream holds values in the hundreds
    torch.testing.assert_close(steered - block_output(subject, ids), vectors[:, None, :].expand_as(steered), rtol=0, atol=1e-3)
    torch.testing.assert_close(block_output(subject, ids), block_output(subject, ids))  # the hook is gone
    with torch.no_grad(), steering(subject, LAYER, vectors[0]):
        steered_logits = subject.model(ids).logits
    with torch.no_grad():
        assert (steered_logits - subject.model(ids).logits).abs().max() > 0.1  # later layers read the steered stream


@pytest.mark.parametrize("file_name", ["sae_weights.safetensors", "sae.safetensors"])
def test_an_sae_features_direction_is_its_decoder_row(tmp_path, subject, file_name):
    W_dec = np.random.default_rng(0).normal(size=(8, subject.d_model)).astype(np.float32)
    save_file({"W_dec": W_dec}, str(tmp_path / file_name))
    (tmp_path / "cfg.json").write_text(json.dumps({}))
    got = feature_directions(source("sae", {"features": f"sae:{tmp_path}"}, width=8), [6, 2], subject)
    np.testing.assert_array_equal(got.vectors.numpy(), W_dec[[6, 2]])
    assert got.layer == LAYER


def test_sources_without_a_direction_or_features_outside_them_are_refused(tmp_path, subject):
    with pytest.raises(AutointerpError, match="imported features without a known write direction"):
        feature_directions(source("imported"), [0], subject)
    with pytest.raises(AutointerpError, match="feature 1536 is not in source"):
        feature_directions(source(), [1536], subject)
    with pytest.raises(AutointerpError, match="is gone"):
        feature_directions(source("sae", {"features": f"sae:{tmp_path / 'nope'}"}, width=8), [0], subject)


def test_amplified_vectors_scale_each_direction_by_its_max_activation(subject):
    directions = feature_directions(source(), [3, 4], subject)
    vectors = amplified(directions, [2.0, 0.5], factor=4)
    torch.testing.assert_close(vectors, directions.vectors * torch.tensor([[8.0], [2.0]]))
    with pytest.raises(AutointerpError, match="one finite max activation per feature"):
        amplified(directions, [float("nan"), 1.0], factor=4)


def test_the_neutral_prompts_ship_with_the_package():
    prompts = neutral_prompts()
    assert len(prompts) >= 20 and not any(p.startswith("#") for p in prompts)
