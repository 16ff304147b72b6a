"""The web catalog as a team service: reviewer tokens, read-only serving, refusal to expose an open
catalog beyond this machine, and reviews that record who made them (in-process HTTP client, real store)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from autointerp.cli import main
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.web import create_app
from autointerp.web.reviewers import ReviewAccess, check_exposure, load_tokens
from catalog_fixtures import SOURCE_A, catalog_copy

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
TEAM = ReviewAccess(tokens={ALICE: "alice", BOB: "bob"})


@pytest.fixture()
def db(tmp_path):
    return catalog_copy(tmp_path)


def best_id(client) -> int:
    return client.get(f"/api/features/{SOURCE_A}/0").json()["best"]["explanation_id"]


def reviewers_of(db, explanation_id):
    with Store(db, read_only=True) as store:
        rows = store.con.execute(
            "SELECT verdict, reviewer FROM reviews WHERE explanation_id = ? ORDER BY review_id", [explanation_id]
        ).fetchall()
    return rows


def test_with_tokens_a_review_needs_one_and_records_its_reviewer(db):
    with TestClient(create_app(db, reviewers=TEAM)) as client:
        eid = best_id(client)
        url = f"/api/explanations/{eid}/reviews"
        missing = client.post(url, json={"verdict": "accept"})
        wrong = client.post(url, json={"verdict": "accept"}, headers={"Authorization": "Bearer not-a-token"})
        assert missing.status_code == wrong.status_code == 403
        assert "reviewer token" in missing.json()["detail"] and ALICE not in wrong.text
        ok = client.post(url, json={"verdict": "reject", "note": "too broad"}, headers={"Authorization": f"Bearer {BOB}"})
        assert ok.status_code == 200 and ok.json()["review_state"] == "rejected"
        assert ok.json()["reviews"][-1]["reviewer"] == "bob"
        page = client.get(f"/features/{SOURCE_A}/0").text
        assert 'name="token"' in page and "by bob" in page
        form = {"explanation_id": str(eid), "verdict": "accept", "token": ALICE}
        posted = client.post(f"/features/{SOURCE_A}/0/reviews", data=form, follow_redirects=False)
        assert posted.status_code == 303 and posted.cookies.get("autointerp_token") == ALICE
        # the browser now holds the token: the page asks for none, and the next review needs none typed
        assert 'name="token"' not in client.get(f"/features/{SOURCE_A}/0").text
        again = client.post(f"/features/{SOURCE_A}/0/reviews", data={"explanation_id": str(eid), "verdict": "reject"})
        assert again.status_code == 200
    assert reviewers_of(db, eid) == [("reject", "bob"), ("accept", "alice"), ("reject", "alice")]


def test_read_only_takes_no_review_and_shows_no_form(db):
    with TestClient(create_app(db, reviewers=ReviewAccess(read_only=True))) as client:
        eid = best_id(client)
        refused = client.post(f"/api/explanations/{eid}/reviews", json={"verdict": "accept"})
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
        form = client.post(f"/features/{SOURCE_A}/0/reviews", data={"explanation_id": str(eid), "verdict": "accept"})
        assert form.status_code == 403 and "read-only" in form.text
        assert "<form class=\"review" not in client.get(f"/features/{SOURCE_A}/0").text
    assert reviewers_of(db, eid) == []


def test_on_this_machine_reviews_are_recorded_under_the_local_user(db):
    with TestClient(create_app(db, reviewers=ReviewAccess(local_reviewer="carol"))) as client:
        eid = best_id(client)
        assert client.post(f"/api/explanations/{eid}/reviews", json={"verdict": "accept"}).status_code == 200
    assert reviewers_of(db, eid) == [("accept", "carol")]


def test_serving_beyond_this_machine_needs_tokens_or_read_only(db, tmp_path, capsys):
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(AutointerpError, match="--tokens FILE"):
            check_exposure(host, ReviewAccess())
        check_exposure(host, TEAM)
        check_exposure(host, ReviewAccess(read_only=True))
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, ReviewAccess())
    assert main(["serve", "--db", str(db), "--host", "0.0.0.0"]) == 2
    assert "lets anyone who reaches it write reviews" in capsys.readouterr().err


def test_token_files_are_checked(tmp_path):
    good = tmp_path / "tokens.toml"
    good.write_text(f'alice = "{ALICE}"\nbob = "{BOB}"\n')
    assert load_tokens(good) == {ALICE: "alice", BOB: "bob"}
    for text, message in [
        ('alice = "short"', "at least 16 characters"),
        (f'alice = "{ALICE}"\nbob = "{ALICE}"', "share a token"),
        ("", "names no reviewer"),
        ("alice = ", "not valid TOML"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(AutointerpError, match=message):
            load_tokens(bad)
    with pytest.raises(AutointerpError, match="no token file"):
        load_tokens(tmp_path / "missing.toml")


def test_the_cli_review_records_the_reviewer(db, capsys):
    with Store(db, read_only=True) as store:
        (eid,) = store.con.execute("SELECT min(explanation_id) FROM explanations").fetchone()
    assert main(["review", "--db", str(db), str(eid), "accept", "--reviewer", "dave"]) == 0
    assert reviewers_of(db, eid) == [("accept", "dave")]
