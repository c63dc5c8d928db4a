"""Headless Chromium on the head atlas: runs submitted through the API with the "roles" analysis, the scores in
the metrics API, the grid and table, the colour switch in the URL, the definitions and the CSV download (the
comparison of two models: test_compare_pages.py)."""

from __future__ import annotations

import csv
import io
import re

import pytest

from tests.conftest import get_json, pick_option, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OPTIONS = {"analyses": ["attention", "metrics", "roles"]}


@pytest.fixture(scope="module")
def runs(live_app, worker) -> dict[str, str]:
    return {
        "minilm": submit_run(live_app, {"model": "all-MiniLM-L6-v2", "options": OPTIONS,
                                     "prompts": ["The cat sat on the mat.", "Paris is the capital of France."]}),
        "lm": submit_run(live_app, {"model": "tiny-pydoc-lm", "options": OPTIONS,
                                 "prompts": ['The "if" statement is used for conditional execution.']}),
    }


def test_scores_in_the_metrics_api(live_app, runs) -> None:
    enc = get_json(live_app, f"/api/runs/{runs['minilm']}/metrics")["metrics"]
    for key in ("previous_token", "induction", "duplicate_token", "positional_peak", "positional_mass",
                "sink_first", "entropy"):
        assert len(enc[key]) == 6 and len(enc[key][0]) == 12, key
    assert "retrieval" not in enc  # an encoder has no retrieval score
    lm = get_json(live_app, f"/api/runs/{runs['lm']}/metrics")["metrics"]
    assert len(lm["retrieval"]) == 4 and len(lm["retrieval"][0]) == 4


def test_atlas_grid_table_definitions_and_csv(live_app, runs, browser) -> None:
    run_id = runs["minilm"]
    ctx = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    page = ctx.new_page()
    page.goto(f"{live_app}/runs/{run_id}")  # the run page links to the atlas
    page.wait_for_selector("#run-link-atlas", timeout=60_000)
    page.click("#run-link-atlas")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/atlas.*"))
    page.wait_for_selector("#atlas-grid .heatmaplayer", state="attached", timeout=60_000)
    page.wait_for_function("document.querySelector('#atlas-grid .gtitle')?.textContent.includes('dominant role')")
    assert "previous token" in page.locator("#atlas-summary").inner_text()
    page.wait_for_selector("#atlas-table td[data-dash-column='induction']")
    assert page.locator("#atlas-table tbody tr:has(td)").count() == 24  # first page of 72 heads

    # every score's definition and source is one click away
    assert not page.locator("#atlas-definitions").evaluate("d => d.open")
    page.click("#atlas-definitions summary")
    defs = page.locator("#atlas-definitions").inner_text()
    assert "Olsson et al. 2022" in defs and "Wu et al. 2024" in defs and "t − L + 1" in defs

    # colour by a score: the URL keeps it
    pick_option(page, "atlas-colour", "induction", exact=True)
    page.wait_for_function("window.location.search.includes('colour=induction')")
    page.wait_for_function("document.querySelector('#atlas-grid .gtitle')?.textContent.includes('induction per head')")

    with page.expect_download() as dl:
        page.click("#atlas-csv-btn")
    rows = list(csv.DictReader(io.StringIO(open(dl.value.path(), encoding="utf-8").read())))
    assert len(rows) == 72 and dl.value.suggested_filename.endswith(".csv")
    assert {"layer", "head", "role", "induction", "duplicate_token", "previous_token", "sink_first"} <= set(rows[0])
    metrics = get_json(live_app, f"/api/runs/{run_id}/metrics")["metrics"]
    row = next(r for r in rows if r["layer"] == "0" and r["head"] == "2")
    assert float(row["previous_token"]) == pytest.approx(metrics["previous_token"][0][2], abs=1e-4)

    # a shared URL re-opens the same view
    other = browser.new_page()
    other.goto(page.url)
    other.wait_for_function("document.querySelector('#atlas-grid .gtitle')?.textContent.includes('induction per head')",
                            timeout=60_000)
    other.close()
    ctx.close()

