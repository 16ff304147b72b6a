"""Output evidence on the bundled model: the logit lens and amplification agree with direct computations through
the model's own modules, and `compute_effects` stores them with their provenance, at collection and on demand."""

import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from neuronpedia.np_explanation import Explanation as NeuronpediaExplanation
from neuronpedia.np_feature import Logit
from test_sae import saelens_cfg, write_saelens

from autointerp.cli import main as cli
from autointerp.collect.collector import CollectConfig, collect
from autointerp.config import JobConfig, SamplingConfig
from autointerp.directions import feature_directions
from autointerp.errors import AutointerpError, NotFound
from autointerp.exchange import export_labels
from autointerp.output_evidence import amplification, compute_effects, logit_lens, prompts_sha256
from autointerp.pipeline import run_label_job
from autointerp.prompts import load_prompt
from autointerp.store import Store
from autointerp.store.activations import SourceInfo, create_source, get_source
from autointerp.store.output_evidence_queries import load_output_evidence
from autointerp.web import create_app

LAYER = 3
PROMPTS = ["The", "I think that", "She said that", "In the morning, we"]  # lengths 1, 3, 3, 5 tokens


@pytest.fixture(scope="module")
def collected(tmp_path_factory, subject):
    """A small real neuron source of the bundled model, collected here (the logit lens is stored with it)."""
    path = tmp_path_factory.mktemp("effects") / "store.duckdb"
    with Store(path, create=True) as store:
        cfg = CollectConfig(layer=LAYER, tokens=2048, context_len=32, batch_size=16, chunk_tokens=1024)
        report = collect(store, cfg, subject=subject, progress=False)
    return path, report.source


def assert_same_effects(got, want):
    """Same tokens in the same order; values equal up to float32 rounding (matrix products split differently)."""
    for side in ("promoted", "suppressed"):
        assert [(e.token, e.token_id) for e in getattr(got, side)] == [(e.token, e.token_id) for e in getattr(want, side)]
        assert [e.value for e in getattr(got, side)] == pytest.approx([e.value for e in getattr(want, side)], rel=1e-4, abs=1e-6)


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


def direct_probability_change(subject, neuron, delta, prompts):
    """Mean over prompts of P(next token) with the neuron's activation raised by `delta` (a pre-hook on down_proj,
    one unbatched plain forward pass per prompt) minus P(next token) without."""
    def bump(_module, inputs):
        x = inputs[0].clone()
        x[..., neuron] += delta
        return (x,)

    changes = []
    for prompt in prompts:
        ids = torch.tensor([subject.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            before = subject.model(ids).logits[0, -1].softmax(-1)
            handle = subject.mlp_out_proj(LAYER).register_forward_pre_hook(bump)
            try:
                after = subject.model(ids).logits[0, -1].softmax(-1)
            finally:
                handle.remove()
        changes.append(after - before)
    return torch.stack(changes).mean(0)


def test_amplification_matches_raising_the_neuron_in_plain_forward_passes(subject):
    features, maxima, factor, prompts = [11, 42, 300], [1.5, 2.0, 0.8], 6.0, PROMPTS[:3]
    directions = feature_directions(neuron_source(), features, subject)
    # batch_sequences=2: prompts in two length groups, two features per pass for the one-prompt group, one for the other
    got = amplification(subject, directions, maxima, factor=factor, prompts=prompts, k=5, batch_sequences=2)
    for feature, m, effects in zip(features, maxima, got):
        direct = direct_probability_change(subject, feature, factor * m, prompts)
        assert [e.token_id for e in effects.promoted] == direct.topk(5).indices.tolist()
        assert [e.token_id for e in effects.suppressed] == (-direct).topk(5).indices.tolist()
        torch.testing.assert_close(torch.tensor([e.value for e in effects.promoted]), direct.topk(5).values, rtol=1e-3, atol=1e-5)
        assert effects.promoted[0].value > 0 > effects.suppressed[-1].value


def test_collection_stores_the_logit_lens_of_every_firing_feature(collected, subject):
    path, source = collected
    with Store(path, read_only=True) as store:
        info = get_source(store.con, source)
        firing = [f for (f,) in store.con.execute("SELECT feature FROM feature_stats WHERE source_id = ?", [info.source_id]).fetchall()]
        stored = load_output_evidence(store.con, info.source_id, source, range(1536))
    assert sorted(stored) == sorted(firing) and len(firing) > 10
    feature = firing[0]
    evidence = stored[feature]
    assert evidence.amplification is None and "amplification" not in evidence.provenance
    expected = logit_lens(subject, feature_directions(info, [feature], subject).vectors)[0]
    assert_same_effects(evidence.logit_lens, expected)
    assert evidence.provenance["logit_lens"]["model"] == "smollm2" and evidence.provenance["logit_lens"]["layer"] == LAYER


def test_collecting_an_sae_stores_the_logit_lens_of_its_decoder_rows(tmp_path, subject):
    rng = np.random.default_rng(1)
    d_sae = 16  # a ReLU SAE whose positive encoder bias makes every latent fire
    weights = {
        "W_enc": (rng.normal(size=(576, d_sae)) * 1e-3).astype(np.float32),
        "b_enc": np.ones(d_sae, np.float32),
        "W_dec": rng.normal(size=(d_sae, 576)).astype(np.float32),
        "b_dec": np.zeros(576, np.float32),
    }
    folder = write_saelens(tmp_path / "sae", weights, {**saelens_cfg("standard"), "d_sae": d_sae})
    with Store(tmp_path / "sae.duckdb", create=True) as store:
        cfg = CollectConfig(features=f"sae:{folder}", tokens=64, context_len=32, batch_size=2, chunk_tokens=64)
        source = collect(store, cfg, subject=subject, progress=False).source
        stored = load_output_evidence(store.con, get_source(store.con, source).source_id, source, range(d_sae))
    assert sorted(stored) == list(range(d_sae))
    for feature, want in zip(range(d_sae), logit_lens(subject, torch.from_numpy(weights["W_dec"]))):
        assert_same_effects(stored[feature].logit_lens, want)


def test_effects_stores_amplification_with_its_provenance(collected, subject):
    path, source = collected
    with Store(path) as store:
        info = get_source(store.con, source)
        features = [f for (f,) in store.con.execute(
            "SELECT feature FROM feature_stats WHERE source_id = ? ORDER BY n_active_tokens DESC LIMIT 2", [info.source_id]
        ).fetchall()]
        maxima = dict(store.con.execute("SELECT feature, max_value FROM feature_stats WHERE source_id = ?", [info.source_id]).fetchall())
        store.close()
        report = compute_effects(store, source, features, model=subject, factor=4.0, prompts=PROMPTS[:2], k=3)
        stored = load_output_evidence(store.con, info.source_id, source, features)
    assert report.n_features == 2 and report.methods == ["logit_lens", "amplification"]
    assert report.cpu_seconds["amplification"] > 0
    directions = feature_directions(info, features, subject)
    expected = amplification(subject, directions, [maxima[f] for f in features], factor=4.0, prompts=PROMPTS[:2], k=3)
    for feature, want in zip(features, expected):
        got = stored[feature]
        assert_same_effects(got.amplification, want)
        prov = got.provenance["amplification"]
        assert prov["factor"] == 4.0 and prov["n_prompts"] == 2 and prov["model"] == "smollm2"
        assert prov["prompts_sha256"] == prompts_sha256(PROMPTS[:2]) != prompts_sha256(None)
        assert prov["max_activation"] == pytest.approx(maxima[feature])


def test_effects_refuses_unknown_and_silent_features_and_imported_sources(collected, subject, tmp_path):
    path, source = collected
    path = shutil.copy(path, tmp_path / "copy.duckdb")
    silent = 5
    with Store(path) as store:
        info = get_source(store.con, source)
        with store.writing() as con:  # as if neuron 5 never fired in this store
            con.execute("DELETE FROM feature_stats WHERE source_id = ? AND feature = ?", [info.source_id, silent])
        store.close()
        with pytest.raises(AutointerpError, match="feature 1536 is not in source"):
            compute_effects(store, source, [1536], model=subject)
        with pytest.raises(NotFound, match=f"feature {silent} of source .* never fires"):
            compute_effects(store, source, [silent], model=subject, prompts=PROMPTS[:1])
        with pytest.raises(NotFound, match="unknown source 'nope'"):
            compute_effects(store, "nope", [1], model=subject)
        with store.writing() as con:
            create_source(con, "imp", model=None, hookpoint=None, layer=None, feature_kind="imported", width=4,
                          context_len=8, config={})
        with pytest.raises(AutointerpError, match="'imp' holds imported features without a known write direction"):
            compute_effects(store, "imp", model=subject)
        # the logit lens alone needs no activation
        compute_effects(store, source, [silent], model=subject, amplify=False)
        assert silent in load_output_evidence(store.con, info.source_id, source, [silent])


SAMPLING = SamplingConfig(
    n_train_top=4, n_train_quantile=4, n_train_hard_negatives=2, n_quantiles=2, n_valid_positives=2,
    n_valid_random_negatives=1, n_valid_hard_negatives=1, n_test_positives=4, n_test_random_negatives=2,
    n_test_hard_negatives=2, min_active_contexts=8,
)


def labelable_features(store, source, n=2):
    """Features that fire in some contexts and stay silent in others (so the sampler finds negatives)."""
    info = get_source(store.con, source)
    rows = store.con.execute(
        "SELECT feature FROM feature_stats WHERE source_id = ? AND n_active_contexts BETWEEN 12 AND 40 "
        "ORDER BY n_active_tokens DESC, feature LIMIT ?",
        [info.source_id, n],
    ).fetchall()
    assert len(rows) == n
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def labeled(collected, subject, local_llm_server, tmp_path_factory):
    """Output evidence with amplification for two features, then a label job with each output prompt on the
    bundled model for the first of them: (store path, source, features, {prompt: summary})."""
    path, source = collected
    path = shutil.copy(path, tmp_path_factory.mktemp("labeled") / "store.duckdb")
    with Store(path) as store:
        features = labelable_features(store, source)
        store.close()
        compute_effects(store, source, features, model=subject, prompts=PROMPTS[:2], k=8)
        summaries = {}
        for prompt in ("output", "combined"):
            job = JobConfig(source=source, features=str(features[0]), explainer="local", prompt=prompt,
                            scorers=("embedding",), sampling=SAMPLING, base_url=local_llm_server, concurrency=1)
            summaries[prompt] = run_label_job(store, job, progress=False)
    return path, source, features, summaries


def test_label_jobs_with_the_output_prompts_store_labels_on_the_bundled_model(labeled):
    path, source, features, summaries = labeled
    for prompt, summary in summaries.items():
        assert summary.status == "done"
        done = summary.with_status("done")
        assert done, f"no usable label from the {prompt} prompt: {summary.results}"
        template = load_prompt(f"explain_{prompt}")
        with Store(path, read_only=True) as store:
            for r in done:
                name, sha, details = store.con.execute(
                    "SELECT prompt_name, prompt_hash, details FROM explanations WHERE explanation_id = ?", [r.explanation_id]
                ).fetchone()
                assert (name, sha) == (template.name, template.sha256)
                shown = json.loads(details)["output_evidence"]
                assert set(shown["shown"]) == {"logit_lens", "amplification"}
                assert shown["computed"]["amplification"]["factor"] == 10.0
                stored = load_output_evidence(store.con, get_source(store.con, source).source_id, source, [r.feature])[r.feature]
                assert shown["shown"]["logit_lens"]["promoted"] == [e.token for e in stored.logit_lens.promoted[:8]]


def test_feature_page_api_and_neuronpedia_export_show_the_output_evidence(labeled, tmp_path):
    path, source, features, summaries = labeled
    feature = features[0]
    with Store(path, read_only=True) as store:
        evidence = load_output_evidence(store.con, get_source(store.con, source).source_id, source, [feature])[feature]
    with TestClient(create_app(path)) as client:
        page = client.get(f"/features/{source}/{feature}").text
        api = client.get(f"/api/features/{source}/{feature}").json()
    assert 'id="output-evidence"' in page and 'id="logit_lens"' in page and 'id="amplification"' in page
    assert page.index('id="output-evidence"') < page.index('id="contexts"')  # input and output evidence together
    assert page.count('class="effect-token"') == 2 * (len(evidence.logit_lens.promoted) + len(evidence.amplification.promoted))
    for e in evidence.logit_lens.promoted + evidence.amplification.suppressed:
        if not set("<>&'") & set(e.token):  # those are escaped in the page
            assert json.dumps(e.token) in page
    assert api["output"]["logit_lens"]["promoted"][0] == {
        "token": evidence.logit_lens.promoted[0].token, "token_id": evidence.logit_lens.promoted[0].token_id,
        "value": pytest.approx(evidence.logit_lens.promoted[0].value),
    }
    assert api["output"]["provenance"]["amplification"]["n_prompts"] == 2

    out = tmp_path / "np.jsonl"
    with Store(path, read_only=True) as store:
        n = export_labels(store.con, out, source=source)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows) > 0
    for row in rows:
        NeuronpediaExplanation.from_np_db_json(row)
        if int(row["index"]) == feature:
            top = [Logit(**logit) for logit in row["topLogits"]]  # Neuronpedia's own type for top logits
            assert [t.token for t in top] == [e.token for e in evidence.logit_lens.promoted]
            assert [b["value"] for b in row["bottomLogits"]] == pytest.approx([e.value for e in evidence.logit_lens.suppressed])
            amp = json.loads(row["notes"])["output_evidence"]["amplification"]
            assert [a["token"] for a in amp["promoted"]] == [e.token for e in evidence.amplification.promoted]


def test_the_output_prompts_need_evidence_for_every_feature_of_the_job(labeled, tmp_path, capsys):
    path, source, features, _ = labeled
    copy = shutil.copy(path, tmp_path / "copy.duckdb")
    with Store(copy) as store:
        with store.writing() as con:
            con.execute("DELETE FROM output_evidence WHERE feature = ?", [features[1]])
        store.close()
        job = JobConfig(source=source, features=",".join(map(str, features)), prompt="combined", scorers=("embedding",))
        with pytest.raises(AutointerpError, match=rf"1 of the 2 features of '{source}' have none stored \({features[1]}\)"):
            run_label_job(store, job, progress=False)
    assert cli(["label", "--db", str(copy), "--source", source, "--features", str(features[1]), "--prompt", "output"]) == 2
    assert "autointerp effects --source" in capsys.readouterr().err


def test_effects_command_computes_and_reports_per_feature_time(collected, tmp_path, capsys):
    path, source = collected
    copy = shutil.copy(path, tmp_path / "copy.duckdb")
    assert cli(["effects", "--db", str(copy), "--source", source, "--features", "0-2", "--no-amplify", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"stored output evidence of 3 features of {source} (logit_lens) on cpu" in out and "ms per feature" in out
    assert cli(["effects", "--db", str(copy), "--source", source, "--features", "2000"]) == 2
    assert "feature 2000 is not in source" in capsys.readouterr().err
