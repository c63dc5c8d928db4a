"""Headless Chromium on the head-importance page: the link from the run page, the grid and its scale switch,
the pruning curves, toggling heads (kept in the URL), running the pruning job and reading before/after,
and a grid click that opens the head on the run page."""

from __future__ import annotations

import re

import pytest

from tests.conftest import pick_option, submit_run, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = ['The "for" statement is used to iterate over the elements of a sequence.',
           "Dictionaries map hashable keys to arbitrary values."]


@pytest.fixture(scope="module")
def run_id(live_app, worker) -> str:
    return submit_run(live_app, {"model": "tiny-pydoc-lm", "prompts": PROMPTS,
                                 "options": {"analyses": ["attention", "importance"]}})


def test_toggle_heads_run_and_compare(live_app, run_id, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(f"{live_app}/runs/{run_id}")
    page.wait_for_selector("#run-link-importance", timeout=60_000)
    page.click("#run-link-importance")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/importance.*"))
    page.wait_for_function("document.querySelector('#imp-grid .gtitle')?.textContent.includes('raw')", timeout=60_000)
    assert "next-token" in page.locator("#imp-objective").inner_text()
    assert "Michel" in page.locator("#imp-source .help").get_attribute("title")

    # scale switch and the curves' metric switch go to the URL
    page.click("text=normalised per layer (l2)")
    page.wait_for_function("document.querySelector('#imp-grid .gtitle')?.textContent.includes('normalised')")
    page.wait_for_selector("#imp-curves .scatterlayer .trace", state="attached")
    page.click("#imp-metric")
    page.get_by_role("option", name="perplexity").click()
    page.wait_for_function("window.location.search.includes('metric=perplexity') && "
                           "window.location.search.includes('view=normalised')")
    page.wait_for_function("document.querySelector('#imp-curves .gtitle')?.textContent.includes('perplexity')")
    # both importance rules, labelled: the released code's (default, orders the curves) and the paper's eq. 2
    assert "per token (released code) (orders the pruning curves)" in page.locator("#imp-grid .gtitle").text_content()
    page.locator("#imp-rule label", has_text="per example").click()
    page.wait_for_function("document.querySelector('#imp-grid .gtitle')?.textContent.includes('per example')")
    page.wait_for_function("window.location.search.includes('rule=per_example')")
    page.locator("#imp-rule label", has_text="per token").click()
    page.wait_for_function("window.location.search.includes('rule=per_token')")

    # switch two heads off: they turn red and the set is in the URL
    page.click("#imp-head-grid button:has-text('2.0')")
    page.click("#imp-head-grid button:has-text('0.3')")
    page.wait_for_function("decodeURIComponent(window.location.search).includes('off=0-3,2-0')")
    page.wait_for_function("document.querySelectorAll('#imp-head-grid button.off').length === 2")
    page.wait_for_function("document.querySelector('#imp-off-text')?.textContent.includes('2 of 16 heads switched off')")

    page.click("#imp-run")
    page.wait_for_selector("#imp-result-table", timeout=90_000)
    table = page.locator("#imp-result-table").inner_text()
    assert "all heads" in table and "2 head(s) off" in table and "loss" in table and "perplexity" in table
    assert page.locator("#imp-pred-before li").count() == 5
    assert page.locator("#imp-pred-after li").count() == 5

    # the URL re-opens the same switched-off heads
    other = browser.new_page(viewport={"width": 1300, "height": 1100})
    other.goto(page.url)
    other.wait_for_selector("#imp-head-grid button.off", state="attached", timeout=60_000)
    assert other.locator("#imp-head-grid button.off").count() == 2
    other.click("#imp-head-grid button:has-text('2.0')")  # switch one back on
    other.wait_for_function("decodeURIComponent(window.location.search).includes('off=0-3') && "
                            "!decodeURIComponent(window.location.search).includes('2-0')")
    other.close()

    # click the grid cell of layer 1, head 2 (4 layers down, 4 heads across) -> the run page on that head
    page.locator("#imp-grid").scroll_into_view_if_needed()
    box = page.locator("#imp-grid .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (2.5 / 4), box["y"] + box["height"] * (1.5 / 4))
    page.wait_for_url(re.compile(rf".*/runs/{run_id}\?.*layer=1.*head=2.*"), timeout=30_000)
    page.wait_for_function("document.querySelector('#run-row .gtitle')?.textContent.includes('layer 1 head 2')",
                           timeout=60_000)
    page.close()


def test_csv_labels_reach_the_run_options(live_app, worker, browser) -> None:
    """A CSV with a 'label' column fills the prompts and sends its labels with the run (option 'labels').
    The demo LM is no classifier: the run says they were ignored."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    pick_option(page, "new-model", "tiny-pydoc-lm (offline)", exact=True)
    page.get_by_text("Head importance", exact=True).click()
    csv = b"text,label\nA list is a mutable sequence.,1\n,0\nStrings are immutable.,0\n"
    page.set_input_files("#new-upload input[type=file]",
                         files=[{"name": "labelled.csv", "mimeType": "text/csv", "buffer": csv}])
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent"
                           ".includes('labelled.csv: 2 prompt(s) with labels')")
    page.click("#new-submit")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}$"), timeout=30_000)
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    done = wait_done(live_app, run_id)
    assert done["status"] == "done" and done["options"]["labels"] == [1, 0]
    assert "importance" in done["options"]["analyses"]
    assert any("labels were ignored" in n for n in done["notices"])
    page.close()
