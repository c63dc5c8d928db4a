"""Headless Chromium drives the real app: submit prompts, watch progress, open the shared URL."""

from __future__ import annotations

import re

import pytest

from tests.conftest import submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_submit_progress_run_page_and_shared_url(live_app, worker, browser) -> None:
    ctx = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = ctx.new_page()
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    page.fill("#new-prompts", "Browsers render tokens as text.\n<script>alert(1)</script>")
    page.click("#new-submit")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}$"), timeout=30_000)
    page.wait_for_selector("[role=progressbar]", timeout=30_000)
    page.wait_for_selector(".status-done", timeout=180_000)
    page.wait_for_selector("#run-tokens .token", timeout=30_000)

    # choose prompt 2 (with the script tag), layer 3, head 5, and click a token
    page.click("#run-prompt")
    page.click("text=/^2: /")
    page.click("#run-layer")
    page.click("text=layer 3")
    page.click("#run-head")
    page.click("text=head 5")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#run-tokens .token')).some(b => b.textContent === '<')"
    )
    # the token buttons are drawn again after each pick: click only once the last pick (head 5) is drawn
    page.wait_for_function("document.querySelector('#run-row .gtitle')?.textContent.includes('layer 3 head 5')"
                           " && window.location.search.includes('head=5')")
    page.wait_for_load_state("networkidle")
    tokens = page.locator("#run-tokens .token")
    assert "<" in tokens.all_inner_texts()  # the prompt's markup is shown as text, not run
    tokens.nth(2).click()
    page.wait_for_function("window.location.search.includes('token=2')")
    url = page.url
    assert "prompt=1" in url and "layer=3" in url and "head=5" in url
    page.wait_for_function(
        "document.querySelector('#run-row .gtitle')?.textContent.includes('layer 3 head 5')"
        " && document.querySelector('#run-row .gtitle').textContent.includes('position 2')"
    )
    title = page.locator("#run-row .gtitle").text_content()

    # a colleague opens the URL in a fresh browser context: same view
    other = browser.new_context(viewport={"width": 1300, "height": 1000})
    page2 = other.new_page()
    dialogs = []
    page2.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page2.goto(url)
    page2.wait_for_selector("#run-tokens .token.selected", timeout=60_000)
    page2.wait_for_function("document.querySelector('#run-row .gtitle')?.textContent.includes('position 2')")
    assert page2.locator("#run-row .gtitle").text_content() == title
    assert page2.locator("#run-tokens .token.selected").inner_text() == tokens.nth(2).inner_text()
    assert dialogs == []
    ctx.close()
    other.close()


def test_empty_prompt_shows_message(live_app, browser) -> None:
    page = browser.new_page()
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    page.fill("#new-prompts", "   \n  ")
    page.click("#new-submit")
    alert = page.wait_for_selector("#new-message [role=alert]", timeout=20_000)
    assert "no prompt" in alert.inner_text()
    assert page.url.rstrip("/") == live_app
    page.close()


def test_recent_runs_lists_runs(live_app, worker, browser) -> None:
    prompt = "The recent runs page lists this prompt."
    run_id = submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": [prompt]})
    page = browser.new_page()
    page.goto(live_app + "/runs")
    page.wait_for_selector("h2:has-text('Recent runs')")
    row = page.locator("table.runs tbody tr", has=page.locator(f"a[href='/runs/{run_id}']"))
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == run_id[:12] and cells[1] == "all-MiniLM-L6-v2" and cells[2] == "1"
    assert cells[3] == prompt and cells[4] == "metrics" and cells[5] == "done"
    row.locator("a").click()
    page.wait_for_url(f"**/runs/{run_id}")
    page.close()
