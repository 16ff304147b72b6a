"""The web catalog in a real headless browser (Debian chromium driven by Playwright), served by
`autointerp serve` in its own process: search, open a result, read the shaded contexts and scores,
review a label and see the review after a reload; hostile strings stay text and no dialog fires."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from catalog_fixtures import HOSTILE_LABEL, IMG, SCRIPT, SOURCE_A, catalog_copy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ALICE_TOKEN = "alice-token-0123456789abcdef"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

import playwright.sync_api as playwright_api  # noqa: E402 - a missing browser stack fails here, it never skips

if not os.path.exists(CHROMIUM):  # a skip would read as a pass
    raise RuntimeError("chromium is not installed: `make browser` (apt-get install chromium) adds it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = catalog_copy(tmp_path_factory.mktemp("browser"))
    yield from _serve(db)


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """Bound to every address, with reviewer tokens."""
    folder = tmp_path_factory.mktemp("team")
    tokens = folder / "tokens.toml"
    tokens.write_text(f'alice = "{ALICE_TOKEN}"\n')
    yield from _serve(catalog_copy(folder), "--host", "0.0.0.0", "--tokens", str(tokens))


def _serve(db, *extra):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from autointerp.cli import main; sys.exit(main())",
         "serve", "--db", str(db), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/runs", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"autointerp serve did not start: {proc.stdout.read()}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def test_search_open_result_review_and_reload(server, page):
    page.goto(server + "/search")
    page.fill("#q", "dogs")
    page.press("#q", "Enter")
    page.wait_for_selector("#results .hit")
    first = page.locator("#results .hit a.label").first
    assert first.inner_text() == "dogs and puppies"
    first.click()
    page.wait_for_selector("#best-label")
    assert page.url.endswith(f"/features/{SOURCE_A}/0")
    assert page.inner_text("#best-label") == "dogs and puppies"
    # contexts: firing tokens are shaded and carry their activation value in the title
    shaded = page.locator(".ctx-top .tok.on")
    assert shaded.count() >= 1
    assert shaded.first.inner_text() in ("dog", "puppy")
    assert float(shaded.first.get_attribute("title")) > 0
    assert "rgba(255, 120, 0" in shaded.first.get_attribute("style")
    assert page.locator("table.scores").first.inner_text().count("balanced_accuracy") >= 2
    # review: accept with a note, then reload and see it kept
    entry = page.locator(".label-entry").first
    entry.locator("form.review input[name=note]").first.fill("checked by hand")
    entry.locator("button.accept").click()
    page.wait_for_load_state()
    page.reload()
    assert page.inner_text("#best-state") == "accepted"
    assert "accept: checked by hand" in page.inner_text("#history")
    assert page.dialogs == []


def test_edit_from_the_feature_page(server, page):
    page.goto(f"{server}/features/{SOURCE_A}/5")
    form = page.locator(".label-entry").first.locator("form.edit")
    form.locator("input[name=label]").fill("rivers, lakes, streams and other water")
    form.locator("input[name=note]").fill("broader")
    form.locator("button.edit").click()
    page.wait_for_load_state()
    page.reload()
    assert page.inner_text("#best-label") == "rivers, lakes, streams and other water"
    assert "edited" in page.inner_text("#history")


def test_hostile_strings_stay_text_and_fire_nothing(server, page):
    page.goto(f"{server}/search?q=markup+injection")
    page.wait_for_selector("#results .hit")
    assert HOSTILE_LABEL in page.inner_text("#results")
    page.goto(f"{server}/features/{SOURCE_A}/6")
    assert page.inner_text("#best-label") == HOSTILE_LABEL
    tokens = page.locator(".ctx .tok").all_inner_texts()
    assert SCRIPT in tokens and IMG in tokens
    assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
    # a human edit made of markup is still only text
    form = page.locator(".label-entry").first.locator("form.edit")
    form.locator("input[name=label]").fill(IMG)
    form.locator("input[name=note]").fill(SCRIPT)
    form.locator("button.edit").click()
    page.wait_for_load_state()
    page.reload()
    assert page.inner_text("#best-label") == IMG
    page.goto(f"{server}/search?q={SCRIPT}")
    assert page.input_value("#q") == SCRIPT
    page.goto(f"{server}/api/features/{SOURCE_A}/6")
    assert IMG in page.inner_text("body")
    assert page.locator("img").count() == 0
    assert page.dialogs == []


def test_a_team_catalog_asks_for_a_reviewer_token_and_records_who_reviewed(team_server, page):
    page.goto(f"{team_server}/features/{SOURCE_A}/0")
    entry = page.locator(".label-entry").first
    entry.locator("form.review input[name=note]").first.fill("no token")
    entry.locator("form.review input[name=token]").first.fill("a-wrong-token-0123456789")
    entry.locator("button.accept").click()
    page.wait_for_load_state()
    assert "valid reviewer token" in page.inner_text("body")
    page.goto(f"{team_server}/features/{SOURCE_A}/0")
    assert page.inner_text("#best-state") == "unreviewed"
    entry = page.locator(".label-entry").first
    entry.locator("form.review input[name=note]").first.fill("checked by alice")
    entry.locator("form.review input[name=token]").first.fill(ALICE_TOKEN)
    entry.locator("button.accept").click()
    page.wait_for_load_state()
    page.reload()
    assert page.inner_text("#best-state") == "accepted"
    assert "accept: checked by alice by alice" in page.inner_text("#history")
    # the browser keeps the token: the next review asks for none
    assert page.locator("input[name=token]").count() == 0
    entry = page.locator(".label-entry").first
    entry.locator("button.reject").click()
    page.wait_for_load_state()
    page.reload()
    assert page.inner_text("#best-state") == "rejected"
    assert ALICE_TOKEN not in page.content() and page.dialogs == []
