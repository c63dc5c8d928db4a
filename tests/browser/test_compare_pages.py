"""Headless Chromium on the two compare pages (``/compare``: layer x head grids; ``/atlas/compare``: head atlases):
runs picked from dropdowns of recent runs, the URL keeping the pair, the top-navigation links, the empty state
with fewer than two runs, and queued runs behind the one run gate until a worker finishes them."""

from __future__ import annotations

import re

import pytest

from tests.conftest import api_call, pick_option, serve_app, start_worker, stop_process, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OPTIONS = {"analyses": ["attention", "metrics", "roles"]}
PROMPTS_A = ["The cat sat on the mat.", "Paris is the capital of France."]
PROMPTS_B = ["Attention heads often look at separators.", "I like green tea, but not coffee."]
LM_PROMPT = 'The "if" statement is used for conditional execution.'


@pytest.fixture(scope="module")
def runs(live_app, worker) -> dict[str, str]:
    return {
        "a": submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS_A, "options": OPTIONS}),
        "b": submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS_B, "options": OPTIONS}),
        "lm": submit_run(live_app, {"model": "tiny-pydoc-lm", "prompts": [LM_PROMPT], "options": OPTIONS}),
    }


def _title(page, graph: str) -> str:
    return page.locator(f"#{graph} .gtitle").first.text_content() or ""


def test_sinks_compare_from_dropdowns(live_app, runs, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(live_app + "/runs")
    page.click("#nav-compare")  # the top navigation leads to the page
    page.wait_for_url(re.compile(r".*/compare$"))
    page.wait_for_selector("#compare-a")
    page.wait_for_function("document.querySelector('#compare-status')?.innerText.includes('Choose run A and run B')")

    # options: model, a preview of the first prompt, the number of further prompts and the date
    pick_option(page, "compare-a", "all-MiniLM-L6-v2 · “The cat sat on the mat.” (+1) · 20")
    pick_option(page, "compare-b", "“Attention heads often look at")
    page.wait_for_function("document.querySelector('#compare-diff .gtitle')?.textContent.includes('B - A')",
                           timeout=60_000)
    page.wait_for_function(f"window.location.search.includes('a={runs['a']}') && "
                           f"window.location.search.includes('b={runs['b']}')")
    assert "first-token" in _title(page, "compare-grid-a") and "first-token" in _title(page, "compare-grid-b")
    assert page.locator("#compare-a-text").inner_text().startswith(f"Run A: {runs['a'][:12]} · all-MiniLM-L6-v2")
    # every outlined cell is one path, not a shape per cell (6 x 12 grid with several heads above eps)
    assert page.locator("#compare-grid-a .layer-above .shapelayer path").count() <= 1

    pick_option(page, "compare-metric", "special")
    page.wait_for_function("window.location.search.includes('metric=sink_special')")
    page.wait_for_function("document.querySelector('#compare-grid-a .gtitle')?.textContent.includes('special')")

    pick_option(page, "compare-b", "tiny-pydoc-lm")  # another shape: both grids, no difference map
    page.wait_for_selector("#compare-message [role=alert]:has-text('differ in shape')", timeout=60_000)
    assert page.locator("#compare-diff-card").is_hidden()
    page.wait_for_function(f"window.location.search.includes('b={runs['lm']}')")

    # the URL reopens the same pair and metric; a malformed id says so through the gate
    other = browser.new_page(viewport={"width": 1300, "height": 1000})
    calls: list[str] = []
    other.on("request", lambda r: calls.append(r.url) if "_dash-update-component" in r.url else None)
    other.goto(page.url)
    other.wait_for_selector("#compare-message [role=alert]:has-text('differ in shape')", timeout=60_000)
    assert "special" in _title(other, "compare-grid-b")
    other.wait_for_timeout(500)
    assert calls == []  # a cached pair: its grids come with the layout
    other.goto(f"{live_app}/compare?a={runs['a']}&b=not-a-run")
    other.wait_for_selector("#gate-b:has-text('No run with id not-a-run')", timeout=30_000)
    assert other.locator("#compare-body").is_hidden()
    other.close()
    page.close()


def test_atlas_compare_from_dropdowns(live_app, runs, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(live_app + "/runs")
    page.click("#nav-atlas-compare")
    page.wait_for_url(re.compile(r".*/atlas/compare$"))
    pick_option(page, "cmp-a", "“The cat sat on the mat.”")
    pick_option(page, "cmp-b", "tiny-pydoc-lm · “The \"if\" statement")
    page.wait_for_selector("#cmp-grids .heatmaplayer", state="attached", timeout=60_000)
    assert "Different shapes" in page.locator("#cmp-mode").inner_text()
    page.wait_for_selector("#cmp-roles td[data-column='status']")
    statuses = page.locator("#cmp-roles td[data-column='status']").all_inner_texts()
    assert statuses and set(statuses) <= {"appears in B", "vanishes in B", "moves", "stays"}
    page.wait_for_function(f"window.location.search.includes('a={runs['a']}') && "
                           f"window.location.search.includes('b={runs['lm']}')")

    pick_option(page, "cmp-b", "“Attention heads often")  # same shape: heads matched one by one
    page.wait_for_function("document.querySelector('#cmp-mode')?.innerText.includes('Same shape')", timeout=60_000)
    assert page.locator("#cmp-heads-card").is_visible()
    page.wait_for_function(f"window.location.search.includes('b={runs['b']}')")

    other = browser.new_page(viewport={"width": 1300, "height": 1000})  # the URL reopens the pair from the layout
    calls: list[str] = []
    other.on("request", lambda r: calls.append(r.url) if "_dash-update-component" in r.url else None)
    other.goto(page.url)
    other.wait_for_selector("#cmp-grids .heatmaplayer", state="attached", timeout=60_000)
    assert "Same shape" in other.locator("#cmp-mode").inner_text() and other.locator("#cmp-heads-card").is_visible()
    assert other.locator("#cmp-roles td[data-column='status']").count() > 0
    other.wait_for_timeout(500)
    assert calls == []
    other.close()
    page.close()


def test_empty_state_then_queued_runs_behind_the_gate(fresh_env, browser) -> None:
    """A store of its own: no runs (empty state), one run (still empty), then two queued runs that no worker
    serves yet (the gate shows both waiting), then a worker finishes them and both pages draw."""
    proc, url = serve_app(fresh_env)
    worker = None
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        for path, empty in (("/compare", "#compare-empty"), ("/atlas/compare", "#cmp-empty")):
            page.goto(url + path)
            page.wait_for_selector(empty, timeout=30_000)
            assert "0 run" in page.locator(empty).inner_text()
            assert page.locator(f"{empty} a[href='/']").count() == 1  # leads to a new analysis
        ids = []
        for prompts in (PROMPTS_A, PROMPTS_B):
            code, out = api_call(url, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": prompts, "options": OPTIONS})
            assert code in (200, 202), out
            ids.append(out["run_id"])
            if len(ids) == 1:
                page.goto(url + "/compare")
                page.wait_for_selector("#compare-empty:has-text('1 run')", timeout=30_000)

        page.goto(url + "/compare")  # two queued runs: listed with their status
        pick_option(page, "compare-a", "“The cat sat on the mat.” (+1)")
        page.click("#compare-b")
        assert "queued" in page.get_by_role("option", name=re.compile("Attention heads")).inner_text()
        page.get_by_role("option", name=re.compile("Attention heads")).click()
        for side in ("a", "b"):  # the one gate, once per run, with the other pages' progress bar
            page.wait_for_selector(f"#gate-{side}:has-text('Run {side.upper()}') #progress-{side}[class*=status-queued]",
                                   timeout=30_000)
        assert page.locator("#compare-body").is_hidden()

        worker = start_worker(fresh_env, preload=False)
        page.wait_for_function("document.querySelector('#compare-diff .gtitle')?.textContent.includes('B - A')",
                               timeout=300_000)
        assert page.locator("#compare-status [role=progressbar]").count() == 0
        page.goto(f"{url}/atlas/compare?a={ids[0]}&b={ids[1]}")
        page.wait_for_function("document.querySelector('#cmp-mode')?.innerText.includes('Same shape')", timeout=60_000)
    finally:
        page.close()
        if worker is not None:
            stop_process(worker)
        stop_process(proc)
