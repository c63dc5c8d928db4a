"""Headless Chromium on the sinks page: the grid, the metric switch in the URL, a click that opens the
head on the run page, the per-prompt views and the StreamingLLM curves (the comparison page:
test_compare_pages.py)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import get_json, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS_A = ["The cat sat on the mat.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def runs(live_app, worker) -> dict[str, str]:
    opts = {"analyses": ["attention", "metrics"]}
    return {
        "a": submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS_A, "options": opts}),
        "lm": submit_run(live_app, {"model": "tiny-pydoc-lm", "options": {"analyses": ["attention", "metrics", "streaming"]},
                                 "prompts": ['The "if" statement is used for conditional execution: it selects '
                                             "exactly one of the suites by evaluating the expressions one by one."]}),
    }


def test_grid_metric_switch_and_click_to_head(live_app, runs, browser) -> None:
    run_id = runs["a"]
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{run_id}")  # the run page links to the view
    page.wait_for_selector("#run-link-sinks", timeout=60_000)
    page.click("#run-link-sinks")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/sinks.*"))
    page.wait_for_selector("#sinks-grid .hm, #sinks-grid .heatmaplayer", state="attached", timeout=60_000)
    page.wait_for_function("document.querySelector('#sinks-grid .gtitle')?.textContent.includes('first-token')")
    assert "Sink rate" in page.locator("#sinks-rate").inner_text()
    assert "eps = 0.3" in page.locator("#sinks-rate").inner_text()
    assert "Gu et al." in page.locator("#sinks-rate .help").get_attribute("title")
    # the run was done when the page opened: its layout held the run's data, so the page never polls
    assert page.locator("#sinks-poll").count() == 0 and page.locator("#sinks-poll-done").count() == 1

    page.click("#sinks-metric")
    page.click("text=attention entropy (nats)")
    page.wait_for_function("window.location.search.includes('metric=entropy')")
    page.wait_for_function("document.querySelector('#sinks-grid .gtitle')?.textContent.includes('entropy')")

    # the grid downloads: CSV (6 layers x 12 heads) and JSON, of the metric on screen
    with page.expect_download() as dl:
        page.click("#sinks-csv-btn")
    lines = open(dl.value.path()).read().strip().splitlines()
    assert dl.value.suggested_filename.startswith("entropy_") and len(lines) == 7
    assert lines[0].split(",")[:3] == ["layer", "head_0", "head_1"] and len(lines[1].split(",")) == 13
    with page.expect_download() as dl:
        page.click("#sinks-json-btn")
    body = json.loads(open(dl.value.path()).read())
    assert body["metric"] == "entropy" and len(body["values"]) == 6 and len(body["values"][0]) == 12

    # the per-prompt views: prompt 2, all layers
    page.click("#sinks-prompt")
    page.click("text=2: [CLS] paris")
    page.click("#sinks-layer")
    page.click("text=all layers x heads")
    page.wait_for_function("window.location.search.includes('prompt=1') && window.location.search.includes('layer=all')")
    page.wait_for_function("document.querySelector('#sinks-received .gtitle')?.textContent.includes('prompt 2, all layers')")
    page.wait_for_function("document.querySelector('#sinks-massive .gtitle')?.textContent.includes('prompt 2')")

    # the URL re-opens the same view
    other = browser.new_page(viewport={"width": 1300, "height": 1000})
    other.goto(page.url)
    other.wait_for_function("document.querySelector('#sinks-grid .gtitle')?.textContent.includes('entropy')", timeout=60_000)
    other.wait_for_function("document.querySelector('#sinks-received .gtitle')?.textContent.includes('prompt 2, all layers')")
    # the sink threshold and rule come from the URL, and the rate is the API's at that threshold and rule
    other.goto(f"{live_app}/runs/{run_id}/sinks?eps=0.45&rule=prompt_mean")
    other.wait_for_function("document.querySelector('#sinks-rate')?.innerText.includes('eps = 0.45')", timeout=60_000)
    text = other.locator("#sinks-rate").inner_text()
    assert "prompt-mean alpha (variant)" in text
    rate = get_json(live_app, f"/api/runs/{run_id}/metrics?eps=0.45&sink_rule=prompt_mean")["metrics"]["sink_rate"]
    assert f"Sink rate {rate:.4f}" in text
    other.close()

    # click the cell of layer 2, head 5 (6 layers top to bottom, 12 heads left to right)
    box = page.locator("#sinks-grid .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (5.5 / 12), box["y"] + box["height"] * (2.5 / 6))
    page.wait_for_url(re.compile(rf".*/runs/{run_id}\?.*layer=2.*head=5.*"), timeout=30_000)
    page.wait_for_function("document.querySelector('#run-row .gtitle')?.textContent.includes('layer 2 head 5')",
                           timeout=60_000)
    page.close()


def test_streaming_curves(live_app, runs, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{runs['lm']}/sinks")
    page.wait_for_selector("#sinks-streaming .scatterlayer .trace", state="attached", timeout=60_000)
    assert page.locator("#sinks-streaming .scatterlayer .trace").count() == 3
    assert "window W =" in page.locator("#sinks-streaming-text").inner_text()
    page.close()
