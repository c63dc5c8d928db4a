"""Headless Chromium on the all-heads view (BertViz's model view): the run page links it, the grid is drawn, the
hover names each head's most-attended key (checked against the attention API), a query token goes to the URL,
and a click on a cell opens that head in the token view."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.conftest import api_call, pick_option, submit_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = ("The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat, and a bird "
          "sings in the old oak tree near the river bank.")

CELL_XY = """([layer, head]) => {
  const gd = document.querySelector('#heads-grid .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(head), box.top + ya._offset + ya.l2p(layer)];
}"""


def test_heads_grid_hover_token_and_click_opens_the_head(live_app, worker, browser) -> None:
    run_id = submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": [PROMPT],
                                   "options": {"analyses": ["attention"]}})
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{run_id}")
    page.click("#run-link-heads", timeout=60_000)
    page.wait_for_url(f"**/runs/{run_id}/heads*")
    page.wait_for_selector("#heads-grid .heatmaplayer image, #heads-grid .hm image", state="attached", timeout=60_000)
    summary = page.locator("#heads-summary").inner_text()
    n = int(re.match(r"(\d+) positions", summary).group(1))
    assert n > 32 and "runs of up to 2 consecutive positions" in summary, summary
    shape = page.evaluate("() => { const d = document.querySelector('#heads-grid .js-plotly-plot').data;"
                          " return [d.length, d[1].text.length, d[1].text[0].length] }")
    assert shape == [2, 6, 12]  # the mosaic and the 6 x 12 cell layer of MiniLM
    # the hover of (layer 2, head 5) names the key with the largest mean attention received, as the API's pattern says
    # (the hover's top key comes from the run's float32 capture, the API's pattern is float16: equal to its
    # rounding, 2^-12, plus the hover's 3 decimals)
    code, body = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=0&layer=2&head=5&wait=60", timeout=90)
    assert code == 200, body
    mean = np.asarray(body["pattern"]).mean(axis=0)
    x, y = page.evaluate(CELL_XY, [2, 5])
    page.mouse.move(x, y)
    hover = page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000).text_content()
    m = re.search(r"top key (\d+):.*mean attention received ([0-9.]+)", hover)
    assert "layer 2 head 5" in hover and m, hover
    top, weight = int(m.group(1)), float(m.group(2))
    assert mean[top] >= mean.max() - 2.0**-11 and abs(weight - mean[top]) <= 5e-4 + 2.0**-11, (hover, mean.max())
    # one query token: strips, the token in the URL
    pick_option(page, "heads-token", "3: brown", exact=True)
    page.wait_for_function("window.location.search.includes('token=3')")
    page.wait_for_function("document.querySelector('#heads-grid .gtitle')?.textContent.includes('attention from 3:')")
    # a click on a cell opens that head in the token view, same prompt and token
    x, y = page.evaluate(CELL_XY, [4, 7])
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(rf".*/runs/{run_id}\?prompt=0&layer=4&head=7&token=3$"), timeout=30_000)
    page.wait_for_selector("#run-tokens .token.selected", timeout=30_000)
    assert page.locator("#run-tokens .token.selected").get_attribute("title").startswith("position 3:")
    # and back: the token view links the all-heads view of its prompt and token
    page.wait_for_function("document.querySelector('#run-heads-link')?.getAttribute('href').endsWith('heads?prompt=0&token=3')")
    page.click("#run-heads-link")
    page.wait_for_function("document.querySelector('#heads-grid .gtitle')?.textContent.includes('attention from 3:')",
                           timeout=60_000)
    # a shared link reopens the same view, from the layout alone (its patterns are cached by now)
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "_dash-update-component" in r.url else None)
    page.goto(f"{live_app}/runs/{run_id}/heads?prompt=0&token=3&scale=head")
    page.wait_for_function("document.querySelector('#heads-grid .gtitle')?.textContent.includes('attention from 3:')",
                           timeout=60_000)
    assert page.locator("#heads-scale input[value='head']").is_checked()
    page.wait_for_timeout(500)
    assert calls == []
    page.close()


def test_heads_view_of_an_unknown_run_says_so(live_app, browser) -> None:
    page = browser.new_page()
    page.goto(f"{live_app}/runs/{'0' * 32}/heads")
    page.wait_for_selector("#heads-status .alert", timeout=30_000)
    assert "No run with id" in page.locator("#heads-status").inner_text()
    page.close()
