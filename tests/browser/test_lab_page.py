"""Headless Chromium on the intervention lab and the extreme-token page: links from the run page, running an
intervention and reading before/after, the request in the URL (a fresh page reproduces it), activation
patching from a URL, the counterfactual pair, and the extreme-token views with sinks and domains."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import api_call, pick_option, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = ["The list is a mutable sequence.", 'The "for" statement iterates over a sequence.',
           "A list is a mutable sequence."]


def _watch(page) -> list[str]:
    """Console errors of a page (a component that throws in the browser logs one, e.g. a bad table format)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text
            else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


@pytest.fixture(scope="module")
def run_id(live_app, worker) -> str:
    return submit_run(live_app, {"model": "tiny-pydoc-lm", "prompts": PROMPTS,
                                 "options": {"analyses": ["attention", "metrics"]}})


def test_intervention_from_the_run_page_and_from_its_url(live_app, run_id, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    errors = _watch(page)
    page.goto(f"{live_app}/runs/{run_id}")
    page.wait_for_selector("#run-link-lab", timeout=60_000)
    page.click("#run-link-lab")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/lab.*"))
    page.wait_for_selector("#lab-heads", timeout=60_000)
    assert "ZeroTuning" in page.locator("#lab-source .help").get_attribute("title")
    page.fill("#lab-heads", "1-2,3-0")
    page.fill("#lab-keys", "0")
    page.fill("#lab-factor", "0.25")
    page.press("#lab-factor", "Enter")
    page.click("#lab-run")
    page.wait_for_selector("#lab-result-table", timeout=120_000)
    table = page.locator("#lab-result-table").inner_text()
    assert "loss" in table and "perplexity" in table and "original" in table and "intervened" in table
    assert page.locator("#lab-pred-before li").count() == 5 and page.locator("#lab-pred-after li").count() == 5
    q = parse_qs(urlparse(page.url).query)
    assert q["mode"] == ["scale"] and q["factor"] == ["0.25"] and q["heads"] == ["1-2,3-0"] and q["keys"] == ["0"]
    # the attention itself: pick layer 1 head 2 (intervened)
    pick_option(page, "lab-layer", "layer 1", exact=True)
    pick_option(page, "lab-head", "head 2", exact=True)
    page.wait_for_function("document.querySelector('#lab-att .gtitle')?.textContent.includes('Layer 1 head 2 (intervened)')",
                           timeout=30_000)
    assert page.locator("#lab-att .subplot.xy").count() >= 1
    page.wait_for_function("window.location.search.includes('layer=1') && window.location.search.includes('head=2')")
    before_loss = page.locator("#lab-row-loss").inner_text()

    # a fresh page on the shared URL runs (here: fetches from the cache) the same request
    other = browser.new_page(viewport={"width": 1300, "height": 1100})
    other.goto(page.url)
    other.wait_for_selector("#lab-result-table", timeout=120_000)
    assert other.locator("#lab-row-loss").inner_text() == before_loss
    other.wait_for_function("document.querySelector('#lab-att .gtitle')?.textContent.includes('Layer 1 head 2')",
                            timeout=30_000)
    assert other.locator("#lab-heads").input_value() == "1-2,3-0"
    other.close()

    # counterfactual pair: prompts 0 and 2, same head
    pick_option(page, "lab-pb", "2: A list")
    page.wait_for_function("document.querySelector('#lab-pair .gtitle')?.textContent.includes('Layer 1 head 2')")
    assert "B - A" in page.locator("#lab-pair").inner_text()
    page.wait_for_function("window.location.search.includes('pb=2')")
    assert not errors, errors
    page.close()


def test_patching_from_a_url(live_app, run_id, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    errors = _watch(page)
    page.goto(f"{live_app}/runs/{run_id}/lab?mode=patch&clean=0&corrupted=2&good=+It&bad=+A")
    page.wait_for_selector("#lab-patch-resid .heatmaplayer", state="attached", timeout=120_000)
    page.wait_for_selector("#lab-patch-heads .heatmaplayer", state="attached")
    text = page.locator("#lab-patch-text").inner_text()
    assert "clean LD" in text and "differ at position(s) [1]" in text
    assert page.locator("#lab-pred-clean li").count() == 5
    assert page.locator("#lab-patch-fields").is_visible() and not page.locator("#lab-int-fields").is_visible()
    # a bad request is a message, not a crash
    page.fill("#lab-bad", " It")
    page.press("#lab-bad", "Enter")
    page.click("#lab-run")
    page.wait_for_function("document.querySelector('#lab-job-status')?.textContent.includes('the two answers must differ')")
    assert not errors, errors
    page.close()


def test_extreme_tokens_page(live_app, run_id, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1200})
    errors = _watch(page)
    page.goto(f"{live_app}/runs/{run_id}")
    page.wait_for_selector("#run-link-extremes", timeout=60_000)
    page.goto(f"{live_app}/runs/{run_id}/extremes?prompt=1&layer=2&eps=0.2")
    page.wait_for_function("document.querySelector('#ext-scatter .gtitle')?.textContent.includes('Layer 2')",
                           timeout=120_000)
    page.wait_for_selector("#ext-table .dash-spreadsheet td", timeout=30_000)
    assert "Active-Dormant" in page.locator("#ext-source .help").get_attribute("title")
    assert page.locator("#ext-scatter .scatterlayer .trace").count() == 4  # one per head
    rows = page.locator("#ext-table tbody tr").count()
    assert rows >= 10  # header + tokens of prompt 1
    page.wait_for_function("document.querySelector('#ext-sinks-text')?.textContent.includes('eps 0.2') || "
                           "document.querySelector('#ext-sinks-text')?.textContent.includes('No key')")
    # sort the table by value norm (a header click)
    page.locator("#ext-table th:has-text('value norm') .column-header--sort").click()
    # domains: built-in sets plus the run's prompts by label
    page.wait_for_function("document.querySelector('#ext-domains .gtitle')?.textContent.includes('sink rate')",
                           timeout=120_000)
    assert "random tokens" in page.locator("#ext-domains").inner_text()
    page.fill("#ext-labels", "prose,code,prose")
    page.press("#ext-labels", "Enter")
    page.wait_for_function("decodeURIComponent(window.location.search).includes('labels=prose,code,prose')")
    page.wait_for_function("document.querySelector('#ext-domains')?.textContent.includes('prose (10)')")
    assert page.locator("#ext-table tbody tr td").first.inner_text() != ""
    assert not errors, errors
    page.close()
