"""Issue 15 in headless Chromium: the landing page's examples, views that offer to compute their analysis (the run
is extended in place), readable and merged tokens, a long prompt's token view, the runs list's analyses."""

from __future__ import annotations

import re

import pytest

from backend import corpora
from tests.conftest import api_call, get_json, submit_run, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_landing_page_explains_and_example_opens_a_finished_run(live_app, worker, browser) -> None:
    page = browser.new_page()
    page.goto(live_app + "/")
    intro = page.wait_for_selector("#intro")
    assert "Look inside transformer attention" in intro.inner_text()
    buttons = page.locator("#intro .examples button").all_inner_texts()
    assert buttons == ["Causal LM on prose", "Causal LM on code", "ViT on sample images", "Encoder (BERT-style)"]
    page.click("#intro button:has-text('Encoder (BERT-style)')")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}$"), timeout=30_000)
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(".status-done", timeout=180_000)
    page.wait_for_selector("#run-tokens .token", timeout=30_000)
    # a second click is a cache hit: the same run, already done
    page.goto(live_app + "/")
    page.click("#intro button:has-text('Encoder (BERT-style)')")
    page.wait_for_url(f"**/runs/{run_id}", timeout=30_000)
    page.wait_for_selector("#run-tokens .token", timeout=30_000)
    body = get_json(live_app, f"/api/runs/{run_id}")
    assert body["model"] == "all-MiniLM-L6-v2" and body["analyses"] == ["attention", "metrics", "roles"]
    page.close()


def test_image_example_opens_the_patch_view(live_app, worker, browser) -> None:
    page = browser.new_page()
    page.goto(live_app + "/")
    page.click("#intro button:has-text('ViT on sample images')")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}/vit"), timeout=30_000)
    run_id = page.url.split("/runs/")[1].split("/")[0]
    assert wait_done(live_app, run_id)["status"] == "done"
    page.close()


def test_view_offers_to_compute_missing_analysis_and_extends_in_place(live_app, worker, browser) -> None:
    run_id = submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": ["Extend me in place, please."],
                                   "options": {"analyses": ["attention"]}})
    page = browser.new_page()
    page.goto(f"{live_app}/runs/{run_id}")
    page.wait_for_selector("#run-links", timeout=30_000)
    link = page.wait_for_selector("#run-link-sinks.not-computed", timeout=30_000)
    assert "not computed yet" in link.inner_text()
    assert page.locator("#run-link-atlas.not-computed").count() == 1
    assert page.locator("#run-link-vit").count() == 0  # an image view is not offered on a text run
    link.click()
    page.wait_for_url(f"**/runs/{run_id}/sinks")
    page.wait_for_selector("#extend-offer", timeout=30_000)
    url = page.url
    page.click("#extend-offer button")
    page.wait_for_selector("#sinks-grid-card .main-svg", state="visible", timeout=120_000)
    assert page.url.split("?")[0] == url  # same page, same run id (the view state joins the query)
    body = get_json(live_app, f"/api/runs/{run_id}")
    assert body["analyses"] == ["attention", "metrics"] and body["extension"]["status"] == "done"
    assert body["options"]["analyses"] == ["attention"]  # the spec (and so the id) is unchanged
    metrics = get_json(live_app, f"/api/runs/{run_id}/metrics")["metrics"]
    assert len(metrics["sink_first"]) == 6
    # a full pattern still comes after the extension (computed on request), and the runs list names the analyses
    assert len(get_json(live_app, f"/api/runs/{run_id}/attention?prompt=0&layer=1&head=2&wait=25")["pattern"]) > 3
    page.goto(live_app + "/runs")
    row = page.locator("table.runs tbody tr", has=page.locator(f"a[href='/runs/{run_id}']"))
    assert row.locator("td.analyses").inner_text() == "metrics"
    page.close()


def test_extend_api_refuses_bad_requests(live_app, worker) -> None:
    run_id = submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": ["Nothing to add here."]})
    code, out = api_call(live_app, f"/api/runs/{run_id}/extend", {"analyses": ["nope"]})
    assert code == 400 and "analyses must be" in out["error"]
    code, out = api_call(live_app, f"/api/runs/{run_id}/extend", {"analyses": ["metrics"]})
    assert code == 200 and out["extension"]["analyses"] == []  # already there
    code, out = api_call(live_app, f"/api/runs/{'0' * 32}/extend", {"analyses": ["metrics"]})
    assert code == 404


def test_readable_and_merged_tokens(live_app, worker, browser) -> None:
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    try:
        resolve_model("smollm2-135m", get_settings())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"smollm2-135m is not available: {exc}")
    code, out = api_call(live_app, "/api/runs", {"model": "smollm2-135m", "prompts": [
        "The unbelievable cat sat.\ndef f(x):"], "options": {"analyses": ["attention"]}})
    assert code in (200, 202), out
    run_id = out["run_id"]
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{run_id}?layer=2&head=1")
    page.wait_for_selector("#run-tokens .token", timeout=300_000)
    chips = page.locator("#run-tokens .token").all_inner_texts()
    assert not any("Ġ" in c or "Ċ" in c for c in chips), chips
    assert " cat" in chips and " unbelievable" not in chips and "↵" in chips, chips
    assert page.locator("#run-tokens .token-break").count() >= 1  # the newline ends its line
    page.check("#run-words input")
    page.wait_for_function("window.location.search.includes('words=1')")
    page.wait_for_function("Array.from(document.querySelectorAll('#run-tokens .token'))"
                           ".some(b => b.textContent === ' unbelievable')")
    # the URL keeps the merge: a fresh page opens merged
    page.goto(page.url)
    page.wait_for_function("Array.from(document.querySelectorAll('#run-tokens .token'))"
                           ".some(b => b.textContent === ' unbelievable')", timeout=60_000)
    page.close()


def test_long_prompt_truncated_with_notice_and_token_view_stays_in_its_card(live_app, worker, browser) -> None:
    import transformers

    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    ref = resolve_model("all-MiniLM-L6-v2", get_settings())
    tok = transformers.AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
    text = corpora.long_prose(tok, 700)
    code, out = api_call(live_app, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": [text],
                                                 "options": {"analyses": ["attention"]}})
    assert code in (200, 202), out
    run_id = out["run_id"]
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{run_id}?layer=2&head=1&token=300")  # often opened while it runs
    page.wait_for_selector("#run-tokens .token.selected", timeout=180_000)
    notice = page.locator("#run-notices").inner_text()
    assert "prompt 1 (" in notice and "limit of 512 tokens" in notice and "all-MiniLM-L6-v2" in notice, notice
    page.wait_for_function("document.querySelector('#run-lines .gtitle')?.textContent.includes('strongest')")
    card = page.locator("#run-view-card").bounding_box()
    for graph in ("#run-row", "#run-lines", "#run-heatmap"):
        box = page.locator(f"{graph} .main-svg").first.bounding_box()
        assert box["x"] + box["width"] <= card["x"] + card["width"] + 1, graph
    assert page.locator("#run-lines .main-svg").first.bounding_box()["height"] < 1000
    assert page.locator("#run-tokens").bounding_box()["height"] < 300
    # the heatmap is a window of 48 query rows around the token (every key, panned), not 512 one-pixel rows
    page.wait_for_function("document.querySelector('#run-heatmap .gtitle')?.textContent.includes('48 queries around')")
    rows = page.evaluate("document.querySelector('#run-heatmap .js-plotly-plot').data[0].y.length")
    assert rows == 48
    assert page.locator("#run-heatmap .main-svg").first.bounding_box()["height"] <= 920
    assert page.evaluate("document.documentElement.scrollHeight") < 4000
    page.close()
