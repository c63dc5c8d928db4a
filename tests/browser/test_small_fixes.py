"""Issue 15 items 3, 4 and 8 in headless Chromium: unknown pages answer 404 (server and client side), error pages
hide controls that cannot work, CSV uploads without a prompt column are refused, a selected special token stays
readable, colour by prompt is categorical, an invalid regex leaves the map as it was, a cancelled run says
"cancelled" at its real progress (run page and API), and a view's "Compute now" offer is drawn once."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import api_call, digit_png, get_json, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

UNKNOWN_RUN = "0" * 32


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _visible(page, selector: str) -> bool:
    """The element exists, is displayed and not hidden by visibility (nor inside a hidden ancestor)."""
    return page.evaluate("""(sel) => { const e = document.querySelector(sel);
        if (!e) return false; const r = e.getBoundingClientRect();
        return e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden' && r.height > 0; }""", selector)


def _luminance(rgb: str) -> float:
    vals = [int(v) / 255 for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in vals]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(fg: str, bg: str) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_unknown_pages_answer_404_with_a_page_not_found_view(live_app, browser) -> None:
    for path in ("/no-such-page", "/runs/not-a-run-id", f"/runs/{UNKNOWN_RUN}", f"/runs/{UNKNOWN_RUN}/sinks",
                 f"/runs/{UNKNOWN_RUN}/no-such-view", "/runs/x/y/z"):
        assert _status(live_app + path) == 404, path
    for path in ("/", "/runs", "/compare"):
        assert _status(live_app + path) == 200, path
    assert _status(live_app + "/api/no-such-endpoint") == 404

    page = browser.new_page()
    resp = page.goto(live_app + "/no-such-page")
    assert resp.status == 404
    page.wait_for_selector("#not-found")
    assert "Page not found" in page.locator("#not-found").inner_text()
    page.click("#not-found-runs")  # its links lead on, inside the app
    page.wait_for_url("**/runs")
    # client-side navigation inside the app to an unknown path draws the same view
    page.evaluate("() => { window.history.pushState({}, '', '/nowhere/at/all');"
                  " window.dispatchEvent(new PopStateEvent('popstate')); }")
    page.wait_for_selector("#not-found", timeout=10_000)
    page.evaluate("() => { window.history.pushState({}, '', '/runs/abc/no-such-view');"
                  " window.dispatchEvent(new PopStateEvent('popstate')); }")
    page.wait_for_function("document.querySelector('#not-found')?.textContent.includes('no-such-view')")
    page.close()


def test_error_pages_hide_controls_that_cannot_work(live_app, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    checks = {"": ["#run-cancel"], "/maps": ["#maps-layer", "#maps-method", "#maps-mode"],
              "/vit": ["#vit-image", "#vit-layer", "#vit-fusion", "#vit-rule"]}
    for seg, controls in checks.items():
        page.goto(f"{live_app}/runs/{UNKNOWN_RUN}{seg}")
        page.wait_for_selector(f"text=No run with id {UNKNOWN_RUN}", timeout=30_000)
        time.sleep(1.0)  # a poll or two later: still hidden
        for sel in controls:
            assert page.locator(sel).count() == 1, sel  # in the page, not shown
            assert not _visible(page, sel), (seg, sel)
    page.close()


def test_csv_without_a_prompt_column_is_refused(live_app, browser) -> None:
    page = browser.new_page()
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    before = page.locator("#new-prompts").input_value()
    page.set_input_files("#new-upload input[type=file]", files=[
        {"name": "notes.csv", "mimeType": "text/csv", "buffer": b"id,body\n1,first prompt\n2,second prompt\n"}])
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent"
                           ".includes(\"notes.csv: no 'prompt' or 'text' column\")")
    assert "add a header row" in page.locator("#new-upload-status").inner_text()
    assert page.locator("#new-upload-status .alert-error").count() == 1
    assert page.locator("#new-prompts").input_value() == before  # nothing lost
    page.close()


def test_model_picker_says_what_runs_offline_and_images_with_a_text_model_are_flagged(live_app, browser) -> None:
    from backend.model_refs import available_models
    from backend.settings import get_settings

    page = browser.new_page()
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    placeholder = page.locator("#new-model-custom").get_attribute("placeholder")
    assert placeholder.startswith("a folder under ")  # not a hub id that fails offline
    page.click("#new-model")
    page.get_by_role("option").first.wait_for()
    options = [o.strip() for o in page.get_by_role("option").all_inner_texts()]
    models = available_models(get_settings())
    assert models and all(f"{m} (offline)" in options for m in models), options  # every model says it runs offline
    page.keyboard.press("Escape")
    how = page.locator("label[for=new-model-custom] .help").get_attribute("title")
    assert "available offline" in how and "model roots" in how and "ATLAS_MODEL_ROOTS" in how
    # an image dropped while a text model is chosen: said at once, beside the upload box
    page.set_input_files("#new-upload input[type=file]",
                         files=[{"name": "five.png", "mimeType": "image/png", "buffer": digit_png(5)}])
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent.includes('is a text model "
                           "and ignores images')")
    assert page.locator("#new-upload-status .alert-warn").count() == 1
    page.close()


@pytest.fixture(scope="module")
def text_run(live_app, worker) -> str:
    return submit_run(live_app, {"model": "all-MiniLM-L6-v2",
                                 "prompts": ["The cat sat on the mat.", "Paris is the capital of France.",
                                             "The keys are on the table."],
                                 "options": {"analyses": ["attention", "metrics", "embedding"],
                                             "embedding_methods": ["pca"]}})


def test_selected_special_token_is_readable(live_app, text_run, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{text_run}?prompt=0&layer=0&head=0&token=0")
    chip = page.wait_for_selector("#run-tokens .token.selected.special", timeout=60_000)  # [CLS], selected
    assert chip.inner_text() == "[CLS]"
    colours = chip.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert _contrast(*colours) >= 4.5, colours  # WCAG AA for normal text
    page.close()


def _head_fig_traces(page) -> list[dict]:
    return page.evaluate("""() => document.querySelector('#maps-head-fig .js-plotly-plot').data.map(
        t => ({name: t.name, colour: typeof t.marker.color === 'string' ? t.marker.color : null,
               scale: !!t.marker.showscale}))""")


def test_maps_colour_by_prompt_and_invalid_regex(live_app, text_run, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(f"{live_app}/runs/{text_run}/maps?view=head&method=pca&layer=1&head=2&colour=prompt&token=the")
    page.wait_for_function("document.querySelector('#maps-head-fig .gtitle')?.textContent.includes('layer 1 head 2')",
                           timeout=60_000)
    page.wait_for_function("document.querySelector('#maps-search-summary')?.textContent.includes('ringed in red')")
    traces = _head_fig_traces(page)
    points = [t for t in traces if t["name"].startswith("input ")]
    assert [t["name"] for t in points[:2]] == ["input 1 (queries)", "input 1 (keys)"]
    assert len({t["colour"] for t in points}) == 3 and all(t["colour"] for t in points)  # one colour per prompt
    assert not any(t["scale"] for t in traces)  # categories, no colour scale
    title = page.locator("#maps-head-fig .gtitle").text_content()

    # an invalid regular expression: the message beside the search box, the map as it was (with its matches)
    page.fill("#maps-search", "/[unclosed/")
    page.press("#maps-search", "Enter")
    page.wait_for_selector("#maps-search-error", timeout=30_000)
    assert "not a valid regular expression" in page.locator("#maps-search-error").inner_text()
    time.sleep(1.0)
    assert _head_fig_traces(page) == traces and page.locator("#maps-head-fig .gtitle").text_content() == title
    assert page.locator("#maps-error").inner_text().strip() == ""
    # a valid one clears the message and rings its matches
    page.fill("#maps-search", "/^pa/")
    page.press("#maps-search", "Enter")
    page.wait_for_function("document.querySelector('#maps-search-summary')?.textContent.includes('ringed in red')")
    assert page.locator("#maps-search-error").count() == 0
    page.close()


def test_compute_now_offer_is_drawn_once(live_app, text_run, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{text_run}/atlas")  # the run has no head roles
    page.wait_for_selector("#extend-offer button", timeout=60_000)
    page.evaluate("() => { document.querySelector('#extend-offer button').dataset.first = 'yes'; }")
    time.sleep(3.0)  # several polls later: one offer, one button, the same element (not redrawn)
    assert page.locator("#extend-offer").count() == 1
    assert page.locator("button:has-text('Compute')").count() == 1
    assert page.locator("#extend-offer button").get_attribute("data-first") == "yes"
    page.close()


def test_cancelled_run_says_cancelled_at_its_progress(live_app, worker, browser) -> None:
    prompts = [f"Prompt number {i}, long enough for the run to take a while on the worker." for i in range(240)]
    code, out = api_call(live_app, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": prompts,
                                                 "options": {"analyses": ["attention", "metrics"]}})
    assert code in (200, 202), out
    run_id = out["run_id"]
    deadline = time.time() + 300
    body = get_json(live_app, f"/api/runs/{run_id}")
    while not (body["status"] == "running" and body["progress"] > 0):
        assert body["status"] in ("queued", "running") and time.time() < deadline, body
        time.sleep(0.1)
        body = get_json(live_app, f"/api/runs/{run_id}")
    code, res = api_call(live_app, f"/api/runs/{run_id}/cancel", {})
    assert code == 200 and res["cancelled"] is True
    while body["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.1)
        body = get_json(live_app, f"/api/runs/{run_id}")
    assert body["status"] == "cancelled" and "cancelled" in body["error"], body
    assert 0 < body["progress"] < 1, body  # the progress it had reached, not 0 and not "done"
    pct = f"{100 * body['progress']:.0f}%"

    page = browser.new_page()
    page.goto(f"{live_app}/runs/{run_id}")
    bar = page.wait_for_selector("#progress.status-cancelled", timeout=30_000)
    assert bar.inner_text().strip() == f"{pct} · cancelled"
    assert page.locator("#progress .progress-track").get_attribute("aria-valuenow") == pct[:-1]
    assert "The run was cancelled: cancelled by the user" in page.locator("#run-status").inner_text()
    assert not _visible(page, "#run-cancel")  # nothing left to cancel
    page.close()
