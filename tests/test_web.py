"""The web catalog through an in-process HTTP client, on a real store file: pages, JSON API, reviews,
escaping of hostile strings, and browsing while another process keeps writing to the store."""

from __future__ import annotations

import html
import subprocess
import sys
import textwrap
import time

import pytest
from fastapi.testclient import TestClient

from autointerp import catalog
from autointerp.errors import AutointerpError, NotFound
from autointerp.records import Explanation, Score
from autointerp.store import Store
from autointerp.web import create_app
from autointerp.web.reviewers import ReviewAccess
from catalog_fixtures import HOSTILE_LABEL, IMG, RUN_ID, SCRIPT, SOURCE_A, SOURCE_B, catalog_copy

HOSTILE = (SCRIPT, IMG)


@pytest.fixture()
def db(tmp_path):
    return catalog_copy(tmp_path)


@pytest.fixture()
def client(db):
    with TestClient(create_app(db, index_interval=0.05)) as c:
        yield c


def assert_escaped(page: str) -> None:
    for raw in HOSTILE:
        assert raw not in page
        assert html.escape(raw) in page or html.escape(raw, quote=False).replace('"', "&#34;") in page


def test_search_page_lists_hits_with_links(client):
    page = client.get("/search", params={"q": "dogs"})
    assert page.status_code == 200
    assert 'href="/features/toy-L0/0">dogs and puppies</a>' in page.text
    semantic = client.get("/search", params={"q": "canine", "mode": "semantic", "limit": 1}).text
    assert "dogs and puppies" in semantic and 'rel="next"' in semantic
    filtered = client.get("/search", params={"q": "animals", "source": SOURCE_B, "limit": 50}).text
    assert "cats and kittens" in filtered and "dogs and puppies" not in filtered
    # the filter form submits empty fields; they mean "no filter"
    form = client.get("/search", params={"q": "dogs", "mode": "hybrid", "source": "", "model": "", "layer": "",
                                         "min_score": "", "density_min": "", "density_max": "", "review": ""})
    assert form.status_code == 200 and "dogs and puppies" in form.text
    assert client.get("/search", params={"q": "dogs", "layer": "x"}).status_code == 400
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 302 and home.headers["location"] == "/search"


def test_feature_page_shows_scores_histogram_contexts_and_history(client):
    page = client.get(f"/features/{SOURCE_A}/2").text
    assert "loop keywords in code" in page and "python for loops over a range" in page  # best + history
    assert "balanced_accuracy" in page and "hard_negatives" in page and "0.61 – 0.81" in page  # CI
    assert "<svg class=\"hist\"" in page and page.count("<rect ") == 20
    assert 'class="tok on" title="' in page and "rgba(255, 120, 0," in page
    assert "Top activating" in page and "Across the activation range" in page and "Random" in page
    assert f'href="/runs/{RUN_ID}"' in page and "highlight.v1" in page


def test_feature_page_and_api_say_why_a_label_is_best_and_flag_unreliable_scores(client, db):
    shaky = Score("detection", "auroc", 0.5, 0.5, 0.5, 2, details={"n_unparsed": 18})
    with Store(db) as store, store.writing() as con:
        catalog.write_label(con, Explanation(SOURCE_B, 1, "recipes for chocolate cake and baking"),
                            [shaky, Score("embedding", "auroc", 0.51, 0.4, 0.6, 40)],
                            run_id=None, config_hash=None, sampling_config=None, seed=None)
    feature = client.get(f"/api/features/{SOURCE_B}/1").json()
    assert feature["best"]["label"] == "banks and money deposits"  # 0.655 embedding beats the newer 0.51
    assert feature["ranked_by"] == ["embedding", "auroc"]
    assert feature["best"]["why_best"]["text"].startswith("highest embedding auroc: 0.655 (n=40) among 2 of 2")
    newest = feature["history"][0]
    assert newest["scores"][0]["unreliable"] == "n=2 is below the minimum of 10"
    page = client.get(f"/features/{SOURCE_B}/1").text
    assert 'id="why-best">why best: highest embedding auroc: 0.655' in page
    assert "unreliable: n=2 is below the minimum of 10" in page


def test_sources_and_labels_are_listed_and_deleted_through_the_api(client):
    sources = client.get("/api/sources").json()
    assert [(s["source"]["name"], s["n_labels"], s["n_features_labeled"]) for s in sources] == [
        (SOURCE_A, 12, 10), (SOURCE_B, 2, 2)]
    assert client.get(f"/api/sources/{SOURCE_B}").json()["n_contexts"] == 80
    labels = client.get(f"/api/sources/{SOURCE_A}/labels", params={"feature": 2}).json()
    assert [l["label"] for l in labels] == ["loop keywords in code", "python for loops over a range"]
    refused = client.delete(f"/api/explanations/{labels[0]['explanation_id']}", headers={"origin": "http://evil.example"})
    assert refused.status_code == 403
    gone = client.delete(f"/api/explanations/{labels[0]['explanation_id']}").json()["deleted"]
    assert gone["explanations"] == 1 and gone["scores"] == 3 and gone["label_embeddings"] == 1
    assert client.get(f"/api/features/{SOURCE_A}/2").json()["best"]["label"] == "python for loops over a range"
    assert client.delete(f"/api/explanations/{labels[0]['explanation_id']}").status_code == 404
    assert client.delete(f"/api/sources/{SOURCE_B}").json()["deleted"]["sources"] == 1
    assert [s["source"]["name"] for s in client.get("/api/sources").json()] == [SOURCE_A]
    assert client.get(f"/api/sources/{SOURCE_B}").status_code == 404
    assert client.get(f"/features/{SOURCE_B}/0").status_code == 404
    hits = client.get("/api/search", params={"q": "cats", "limit": 50}).json()["hits"]
    assert hits and all(h["source"] == SOURCE_A for h in hits)


def test_feature_page_shows_scores_per_activation_quantile(client, db):
    from autointerp.catalog import write_label
    from autointerp.records import Explanation, Score
    from autointerp.store import Store

    by_quantile = {"0": {"value": 0.4, "ci_low": 0.25, "ci_high": 0.5, "n": 12},
                   "top": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "n": 11}}
    with Store(db).writing() as con:
        write_label(con, Explanation(SOURCE_A, 5, "quantile label"),
                    [Score("detection", "balanced_accuracy", 0.7, 0.6, 0.8, 15, details={"by_quantile": by_quantile})],
                    run_id=None, config_hash=None, sampling_config=None, seed=None, embedding=[1.0] + [0.0] * 383)
    page = client.get(f"/features/{SOURCE_A}/5").text
    assert "by activation quantile" in page
    assert '<span title="95% CI 0.25 – 0.5, n=12">q0 0.4</span> · <span title="95% CI 0.8 – 1, n=11">top 0.9</span>' in page


def test_run_pages_show_progress_tokens_and_cost(client):
    page = client.get(f"/runs/{RUN_ID}").text
    assert 'id="run-status">done<' in page and "$0.0021" in page and "420 prompt" in page
    assert "openai:gpt-test" in page and "detection" in page
    assert RUN_ID in client.get("/runs").text


def test_missing_things_are_404_with_a_message(client):
    assert client.get(f"/features/{SOURCE_A}/999").status_code == 404
    assert client.get("/features/nope/1").status_code == 404
    assert client.get("/runs/nope").status_code == 404
    response = client.get("/api/explanations/999999")
    assert response.status_code == 404 and "no label" in response.json()["detail"]
    assert client.get("/search", params={"q": "x", "min_score": "bad"}).status_code == 400


def test_the_status_comes_from_the_error_type_not_its_wording(db):
    """A user error that reads like "feature ..." is still a 400; a NotFound is a 404 whatever it says."""
    app = create_app(db, index_interval=0.05)

    @app.get("/api/_wording")
    def wording():
        raise AutointerpError("feature 3 has no test positives to score; re-sample it with more")

    @app.get("/api/_missing")
    def missing():
        raise NotFound("nothing by that name in this store")

    with TestClient(app) as c:
        assert c.get("/api/_wording").status_code == 400
        assert c.get("/api/_missing").status_code == 404


def test_json_api_and_openapi(client):
    hits = client.get("/api/search", params={"q": "kettle", "mode": "keyword"}).json()["hits"]
    assert [(h["source"], h["feature"], h["label"]) for h in hits] == [(SOURCE_A, 8, "kitchen kettle")]
    feature = client.get(f"/api/features/{SOURCE_A}/8").json()
    assert feature["best"]["label"] == "kettles and teapots" and len(feature["history"]) == 2
    assert feature["stats"]["n_active_contexts"] > 0 and feature["contexts"][0]["kind"] == "top"
    label = client.get(f"/api/explanations/{feature['best']['explanation_id']}").json()
    assert label["scores"][0]["n"] == 40 and label["prompt_hash"] == "abc123"
    run = client.get(f"/api/runs/{RUN_ID}").json()
    assert run["run"]["status"] == "done" and run["n_labels"] == 14
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/features/{source}/{feature}", "/api/explanations/{explanation_id}",
            "/api/explanations/{explanation_id}/reviews", "/api/runs/{run_id}", "/api/sources",
            "/api/sources/{source}", "/api/sources/{source}/labels"} <= set(paths)


def test_reviews_persist_through_form_and_api(client, db):
    best = client.get(f"/api/features/{SOURCE_A}/1").json()["best"]
    response = client.post(
        f"/features/{SOURCE_A}/1/reviews",
        data={"explanation_id": best["explanation_id"], "verdict": "accept", "note": "fits"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == f"/features/{SOURCE_A}/1"
    page = client.get(f"/features/{SOURCE_A}/1").text
    assert 'id="best-state">accepted<' in page and "accept: fits" in page
    edited = client.post(
        f"/api/explanations/{best['explanation_id']}/reviews", json={"verdict": "edit", "label": "equity trading", "note": "n"}
    ).json()
    assert edited["label"] == "equity trading" and edited["author"] == "human"
    assert client.get(f"/api/features/{SOURCE_A}/1").json()["best"]["label"] == "equity trading"
    # a fresh app on the same file (a restart) sees the same reviews
    with TestClient(create_app(db)) as again:
        assert again.get(f"/api/features/{SOURCE_A}/1").json()["best"]["review_state"] == "accepted"
        assert "equity trading" in again.get("/search", params={"q": "equity"}).text
    bad = client.post(f"/api/explanations/{best['explanation_id']}/reviews", json={"verdict": "maybe"})
    assert bad.status_code == 400 and "unknown review verdict" in bad.json()["detail"]


def test_cross_site_review_posts_are_refused(client):
    response = client.post(
        f"/features/{SOURCE_A}/1/reviews", data={"explanation_id": 1, "verdict": "reject"},
        headers={"origin": "http://evil.example"}, follow_redirects=False,
    )
    assert response.status_code == 403
    assert client.get("/api/explanations/1").json()["reviews"] == []


def test_hostile_strings_render_as_text_everywhere(client):
    pages = [
        client.get("/search", params={"q": "markup injection"}).text,
        client.get("/search", params={"q": f"{SCRIPT} {IMG}"}).text,  # the query itself is echoed back
        client.get(f"/features/{SOURCE_A}/6").text,
    ]
    for page in pages + [client.get(f"/runs/{RUN_ID}").text, client.get("/runs").text]:
        assert "<script>" not in page and "<img" not in page
    for page in pages:
        assert_escaped(page)
    feature = client.get(f"/api/features/{SOURCE_A}/6")
    assert feature.headers["content-type"] == "application/json"
    data = feature.json()
    assert data["best"]["label"] == HOSTILE_LABEL
    assert any(SCRIPT in c["tokens"] and IMG in c["tokens"] for c in data["contexts"])
    search = client.get("/api/search", params={"q": "markup", "mode": "keyword"})
    assert search.headers["content-type"] == "application/json" and search.json()["hits"][0]["label"] == HOSTILE_LABEL
    # a human edit containing markup is stored verbatim and shown escaped
    eid = data["best"]["explanation_id"]
    client.post(f"/features/{SOURCE_A}/6/reviews", data={"explanation_id": eid, "verdict": "edit", "label": IMG, "note": SCRIPT})
    page = client.get(f"/features/{SOURCE_A}/6").text
    assert "<img" not in page and "<script>" not in page
    assert client.get(f"/api/features/{SOURCE_A}/6").json()["best"]["label"] == IMG


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from autointerp.catalog import write_label
    from autointerp.records import Explanation, Score
    from autointerp.store import Store

    path, n = sys.argv[1], int(sys.argv[2])
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    for i in range(n):
        with Store(path).writing() as con:  # opens, writes, commits, closes: the file is free in between
            write_label(con, Explanation("toy-L1", 100 + i, f"harpsichord writer label {i}"),
                        [Score("detection", "balanced_accuracy", 0.5, 0.4, 0.6, 10)],
                        run_id="writer", config_hash=None, sampling_config=None, seed=None, embedding=vector)
        time.sleep(0.02)
    print("wrote", n)
    """
)


def test_catalog_stays_browsable_while_another_process_writes(client, db, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 25
    writer = subprocess.Popen([sys.executable, str(script), str(db), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    statuses, seen = [], set()
    deadline = time.monotonic() + 120
    best = client.get(f"/api/features/{SOURCE_B}/0").json()["best"]["explanation_id"]
    while writer.poll() is None and time.monotonic() < deadline:
        for response in (
            client.get("/search", params={"q": "harpsichord writer"}),
            client.get(f"/features/{SOURCE_B}/0"),
            client.get("/api/search", params={"q": "harpsichord", "mode": "keyword", "limit": 50}),
        ):
            statuses.append(response.status_code)
            if response.headers["content-type"] == "application/json":
                seen.update(h["feature"] for h in response.json()["hits"])
        review = client.post(f"/api/explanations/{best}/reviews", json={"verdict": "accept", "note": "during the job"})
        statuses.append(review.status_code)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert out.strip() == f"wrote {n}"
    assert statuses and set(statuses) == {200}, statuses
    wanted = set(range(100, 100 + n))
    found: set = set()
    deadline = time.monotonic() + 60  # the index keeper looks every 0.05 s here; a full build takes ~1 s
    while found != wanted and time.monotonic() < deadline:
        final = client.get("/api/search", params={"q": "harpsichord", "mode": "keyword", "limit": 50}).json()
        found = {h["feature"] for h in final["hits"]}
        time.sleep(0.05)
    assert found == wanted
    assert len(client.get(f"/api/explanations/{best}").json()["reviews"]) >= 1


def test_api_docs_page_loads_its_scripts_from_this_server(tmp_path):
    """/docs works offline: the Swagger UI assets come from the installed swagger-ui-bundle package."""
    client = TestClient(create_app(catalog_copy(tmp_path)))
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    for asset in ("/swagger-ui/swagger-ui-bundle.js", "/swagger-ui/swagger-ui.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "autointerp catalog"


def test_feature_page_says_why_a_score_is_undefined(db):
    from autointerp.catalog import write_label
    from autointerp.records import Explanation, Score
    from autointerp.store import Store

    why = "no random negatives in the test split"
    with Store(db) as store, store.writing() as con:
        write_label(
            con, Explanation(SOURCE_A, 3, "a label of a dense feature"),
            [Score("embedding", "auroc", None, None, None, 20, subset="random_negatives", details={"note": why})],
            run_id=None, config_hash=None, sampling_config=None, seed=None,
        )
    with TestClient(create_app(db, index_interval=0.05)) as c:
        page = c.get(f"/features/{SOURCE_A}/3").text
    assert f"({why})" in page


def test_deletes_need_a_reviewer_token_and_never_happen_read_only(db):
    with TestClient(create_app(db, reviewers=ReviewAccess(tokens={"s3cret": "ada"}))) as c:
        assert c.delete(f"/api/sources/{SOURCE_B}").status_code == 403
        assert c.delete(f"/api/sources/{SOURCE_B}", headers={"Authorization": "Bearer wrong"}).status_code == 403
        ok = c.delete(f"/api/sources/{SOURCE_B}", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["deleted"]["sources"] == 1
    with TestClient(create_app(db, reviewers=ReviewAccess(read_only=True))) as c:
        assert c.delete("/api/explanations/1").status_code == 403
        assert c.get("/api/explanations/1").status_code == 200


def test_feature_page_shows_the_baseline_label_beside_the_llm_label(db):
    from autointerp.baseline import BaselineLabel
    from autointerp.catalog import write_label
    from autointerp.records import Explanation, Score
    from autointerp.store import Store
    from catalog_fixtures import _scores

    baseline = BaselineLabel("for, range, in", "token log-odds, train split", Score("embedding", "auroc", 0.734, 0.61, 0.85, 30))
    store = Store(db)
    with store.writing() as con:
        write_label(
            con, Explanation(SOURCE_A, 2, "for loops over ranges", details={"baseline": baseline.to_details()}),
            _scores(0.99), run_id=RUN_ID, config_hash="cfg-hash", sampling_config={}, seed=0,
        )
    store.close()
    with TestClient(create_app(db, index_interval=0.05)) as client:
        page = client.get(f"/features/{SOURCE_A}/2").text
        assert 'id="best-label">for loops over ranges<' in page
        assert 'class="baseline-label">for, range, in<' in page and "embedding auroc <b>0.734</b>" in page and "n=30" in page
        assert "token log-odds, train split" in page
        assert 'id="baseline"' not in client.get(f"/features/{SOURCE_A}/0").text  # labels stored without one
