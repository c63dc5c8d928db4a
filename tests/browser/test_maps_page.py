"""Headless Chromium on the query-key maps page: from the run page to the matrix of all heads, a click on a cell
to that head's map (the same points as the API), hover context, a clicked token's attention (equal to the stored
pattern), token search, colouring and normalisation in the URL, a shared URL, and an image run's patches."""

from __future__ import annotations

import hashlib
import re
import urllib.parse

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from backend import embedding_points
from tests.conftest import api_call, digit_png, pick_option, submit_run, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = [
    "The cat sat on the mat because the cat was tired.",
    "A dog chased the cat across the garden.",
    "Queries and keys of one head share a single map.",
    "<script>alert(1)</script> is shown as text.",
]
PLOT = "document.querySelector('{sel} .js-plotly-plot')"


def _wait_title(page, sel: str, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function(f"{PLOT.format(sel=sel)}?.querySelector('.gtitle')?.textContent.includes({text!r})",
                           timeout=timeout)


def _pixel(page, sel: str, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of data point (x, y) of a graph."""
    return tuple(page.evaluate(
        f"""([x, y]) => {{ const gd = {PLOT.format(sel=sel)}; const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const r = gd.getBoundingClientRect(); return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)]; }}""",
        [x, y]))


def _trace_points(page, sel: str, trace: int) -> np.ndarray:
    return np.array(page.evaluate(
        f"(t) => {{ const d = {PLOT.format(sel=sel)}._fullData[t]; return [Array.from(d.x), Array.from(d.y)]; }}",
        trace)).T


def _hover(page, sel: str, x: float, y: float) -> str:
    """Hover the point at (x, y) and return its hover label."""
    for _ in range(5):  # a late redraw of the figure (a callback landing after the title) clears the hover: hover again
        px, py = _pixel(page, sel, x, y)
        page.mouse.move(2, 2)  # off the graph: no stale label from an earlier hover
        page.wait_for_function(f"!document.querySelector('{sel} .hoverlayer .hovertext')", timeout=10_000)
        page.mouse.move(px, py)
        try:
            return page.wait_for_function(
                f"(() => {{ const e = document.querySelector('{sel} .hoverlayer .hovertext'); return e && e.textContent; }})()",
                timeout=10_000).json_value()
        except PlaywrightTimeout:
            continue
    raise AssertionError("no hover label appeared after 5 tries")


def _hover_and_click(page, sel: str, x: float, y: float, selected: str) -> str:
    """Hover the point at (x, y), click it and wait until the URL holds the selection ``selected`` (``sel=...``);
    returns the hover label. plotly.js clicks the point it last hovered: a redraw between the hover and the click
    (a late callback) forgets it and the click selects nothing, so a click that selected nothing is tried again."""
    for _ in range(3):
        label = _hover(page, sel, x, y)
        page.mouse.down()
        page.mouse.up()
        try:
            page.wait_for_function(f"window.location.search.includes({selected!r})", timeout=10_000)
            return label
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"three clicks on the point did not select it ({selected} is not in {page.url})")


def _wait_token_text(page, timeout: float = 60_000) -> None:
    """Wait for the selected token's attention (computed on request: the panel says so and polls meanwhile);
    a timeout names what the panel showed."""
    try:
        page.wait_for_selector("#maps-token-text", timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"no token view; its panel says: {page.locator('#maps-token').inner_text()!r}") from None


@pytest.fixture(scope="module")
def text_run(live_app, worker) -> str:
    return submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS, "options": {
        "analyses": ["attention", "embedding"], "embedding_methods": ["umap", "pca"]}})


def test_matrix_to_head_to_token(live_app, text_run, browser) -> None:
    run_id = text_run
    dialogs: list[str] = []
    ctx = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{live_app}/runs/{run_id}")
    page.wait_for_selector("#run-link-maps", timeout=60_000)
    page.click("#run-link-maps")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/maps.*"))
    _wait_title(page, "#maps-matrix", "UMAP maps of all heads")
    # the points of all 72 heads are one image (cell backgrounds included), drawn without WebGL; every cell has points
    assert page.evaluate(f"{PLOT.format(sel='#maps-matrix')}._fullData.map(t => t.type)") == ["image", "scatter", "scatter"]
    assert page.evaluate(f"{PLOT.format(sel='#maps-matrix')}.querySelectorAll('canvas.gl-canvas').length") == 0
    painted = page.evaluate(f"""async () => {{ const t = {PLOT.format(sel='#maps-matrix')}._fullData[0];
        const img = new Image(); img.src = t.source; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
        const px = Math.round(1 / t.dx), cells = new Array(6 * 12).fill(0);
        for (let i = 3; i < d.length; i += 4) {{ if (d[i] && (d[i - 3] !== 0xf4 || d[i - 2] !== 0xf5 || d[i - 1] !== 0xf8)) {{ const p = (i - 3) / 4, r = Math.floor(p / c.width), col = p % c.width;
            cells[Math.floor(r / px) * 12 + Math.floor(col / px)]++; }} }}
        return [img.width, img.height, px, cells]; }}""")
    w, h, px, cells = painted
    assert (w, h) == (12 * px, 6 * px) and min(cells) > 0, cells

    # hovering anywhere in a cell names its head
    for cell in ((0, 0), (1, 2)):
        page.mouse.move(2, 2)
        page.mouse.move(*_pixel(page, "#maps-matrix", cell[1] - 0.3, cell[0] - 0.3))
        text = page.wait_for_function(
            "(() => { const e = document.querySelector('#maps-matrix .hoverlayer .hovertext'); return e && e.textContent; })()",
            timeout=10_000).json_value()
        assert text == f"layer {cell[0]} head {cell[1]}: click to open", text
    page.mouse.move(2, 2)

    # a click inside a cell (not on a point) opens that head
    px, py = _pixel(page, "#maps-matrix", 4.38, 2.41)
    page.mouse.click(px, py)
    page.wait_for_function("window.location.search.includes('view=head')")
    _wait_title(page, "#maps-head-fig", "layer 2 head 4 · UMAP")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert q["layer"] == ["2"] and q["head"] == ["4"] and q["method"] == ["umap"]

    # the drawn points are the API's points for that head
    _, api = api_call(live_app, f"/api/runs/{run_id}/embedding?layer=2&head=4&method=umap")
    pts = api["points"]
    queries = _trace_points(page, "#maps-head-fig", 0)
    keys = _trace_points(page, "#maps-head-fig", 1)
    api_q = np.array([[p["x"], p["y"]] for p in pts if p["kind"] == "query"])
    api_k = np.array([[p["x"], p["y"]] for p in pts if p["kind"] == "key"])
    assert np.allclose(np.sort(queries, axis=0), np.sort(api_q, axis=0), atol=1e-5)
    assert np.allclose(np.sort(keys, axis=0), np.sort(api_k, axis=0), atol=1e-5)

    # hover shows the token in context; a click shows where that query attends, equal to the stored pattern
    target = next(p for p in pts if p["kind"] == "query" and p["token"] == "chased")
    label = _hover_and_click(page, "#maps-head-fig", target["x"], target["y"],
                             f"sel=q.{target['prompt']}.{target['position']}")
    assert "chased" in label and f"prompt {target['prompt']}, position {target['position']}" in label
    assert "[chased]" in label  # the context brackets the token
    _wait_token_text(page)
    spans = page.locator("#maps-token-text .token")
    _, att = api_call(live_app, f"/api/runs/{run_id}/attention?prompt={target['prompt']}&layer=2&head=4&wait=60", timeout=90)
    assert spans.all_inner_texts() == att["tokens"]
    shown = [float(t.rsplit(": ", 1)[1]) for t in (spans.nth(i).get_attribute("title") for i in range(spans.count()))]
    assert np.allclose(shown, att["pattern"][target["position"]], atol=1e-4)  # both read the same stored float16 row
    bars = page.evaluate(f"Array.from({PLOT.format(sel='#maps-token-fig')}._fullData[0].y)")
    assert np.allclose(bars, att["pattern"][target["position"]], atol=1e-5)

    # search highlights the token everywhere; the count is the API's
    page.fill("#maps-search", "cat")
    page.press("#maps-search", "Enter")
    n_cat = sum(embedding_points.clean_token(p["token"]) == "cat" for p in pts)
    assert n_cat >= 6
    page.wait_for_function(f"document.querySelector('#maps-search-summary')?.textContent.includes('{n_cat} points')")
    ringed = page.evaluate(f"{PLOT.format(sel='#maps-head-fig')}._fullData.find(t => t.name.startsWith('matches')).x.length")
    assert ringed == n_cat

    # colouring and normalisation go to the URL; the raw map is another map, computed on request: the run has none,
    # so the page offers it, extends the run (same id, same URL) and shows the progress, then the raw map
    page.click("#maps-colour")
    page.get_by_role("option", name="normalised position", exact=True).click()
    page.wait_for_function("window.location.search.includes('colour=position')")
    code, refused = api_call(live_app, f"/api/runs/{run_id}/embedding?layer=2&head=4&method=umap_raw")
    assert code == 400 and "computed on request" in refused["error"]
    page.uncheck("#maps-norm input[type=checkbox]")
    page.wait_for_function("window.location.search.includes('norm=0')")
    page.wait_for_selector("#maps-error #extend-offer button", timeout=30_000)
    page.click("#maps-error #extend-offer button")
    _wait_title(page, "#maps-head-fig", "UMAP (raw)", timeout=120_000)
    assert "norm=0" in page.url and "colour=position" in page.url and "sel=" in page.url
    _, body = api_call(live_app, f"/api/runs/{run_id}")
    assert body["analyses"] == ["attention", "embedding", "embedding_raw"] and body["extension"]["status"] == "done"

    with page.expect_download() as dl:
        page.click("#maps-csv-btn")
    lines = open(dl.value.path(), encoding="utf-8").read().splitlines()
    assert lines[0] == "x,y,kind,prompt,position,token" and len(lines) == len(pts) + 1

    # the shared URL re-opens the same view in a fresh browser context
    other_ctx = browser.new_context(viewport={"width": 1300, "height": 1000})
    other = other_ctx.new_page()
    loading = []
    other.on("request", lambda r: loading.append(r.post_data_json) if "_dash-update-component" in r.url else None)
    other.goto(page.url)
    _wait_title(other, "#maps-head-fig", "layer 2 head 4 · UMAP (raw)")
    _wait_token_text(other)
    other.wait_for_timeout(500)
    # the map, the hover table and the selected token's attention come with the app's layout: no request
    assert loading == []
    assert other.input_value("#maps-search") == "cat"
    other.wait_for_function(f"document.querySelector('#maps-search-summary')?.textContent.includes('{n_cat} points')")
    assert other.evaluate(f"{PLOT.format(sel='#maps-head-fig')}._fullData[0].marker.colorscale") is not None
    assert other.locator("#maps-poll").count() == 0  # a done run: the layout holds it, nothing polls

    # a head switch redraws in the browser: the new head's float32 coordinates (embedding.f32) into the drawn traces
    # (the search rings and hover texts stay: every head has the same points), no figure from the server
    responses = []
    other.on("response", lambda r: responses.append(r) if "_dash-update-component" in r.url or "embedding.f32" in r.url
             else None)
    for layer, head, server in ((2, 5, False), (3, 5, True)):
        responses.clear()
        if server:  # the binary fetch fails (another layer: not fetched ahead): the server draws the head, sending
            # hover-table indices, not the texts
            other.route("**/embedding.f32*", lambda route: route.abort())
            pick_option(other, "maps-layer", f"layer {layer}", exact=True)
        else:
            pick_option(other, "maps-head", f"head {head}", exact=True)
        _wait_title(other, "#maps-head-fig", f"layer {layer} head {head} · UMAP (raw)")
        other.wait_for_timeout(300)
        switch = [r.text() for r in responses if "_dash-update-component" in r.url and '"maps-head-raw"' in r.text()]
        fetched = [r for r in responses if "embedding.f32" in r.url]
        if server:
            assert len(switch) == 1 and '"hovertext":' not in switch[0] and '"maps-hover":' not in switch[0]
            assert '"customdata":' in switch[0]
        else:
            # (the layer's other heads are fetched ahead once a map is drawn: this one may already be there)
            assert switch == [] and all("layer=2&" in r.url and "method=umap_raw" in r.url for r in fetched)
        _, api = api_call(live_app, f"/api/runs/{run_id}/embedding?layer={layer}&head={head}&method=umap_raw")
        for trace, kind in ((0, "query"), (1, "key")):
            drawn = _trace_points(other, "#maps-head-fig", trace)
            want = np.array([[p["x"], p["y"]] for p in api["points"] if p["kind"] == kind])
            assert np.allclose(np.sort(drawn, axis=0), np.sort(want, axis=0), atol=1e-5)
        cat = [[p["x"], p["y"]] for p in api["points"] if embedding_points.clean_token(p["token"]) == "cat"]
        ringed = other.evaluate(f"(() => {{ const t = {PLOT.format(sel='#maps-head-fig')}._fullData"
                                ".find(t => t.name.startsWith('matches')); return [Array.from(t.x), Array.from(t.y)]; })()")
        assert np.allclose(np.sort(np.array(ringed).T, axis=0), np.sort(np.array(cat), axis=0), atol=1e-5)
        hover = other.evaluate(f"(() => {{ const t = {PLOT.format(sel='#maps-head-fig')}._fullData[0]; "
                               "return [t.x.length, t.hovertext.length, t.hovertext[0]]; })()")
        assert hover[0] == hover[1] > 0 and "prompt" in hover[2] and "position" in hover[2]
    other.wait_for_function("window.location.search.includes('layer=3')")
    other_ctx.close()
    assert dialogs == []  # the <script> prompt never ran
    ctx.close()


def test_bad_view_parameters_fall_back(live_app, text_run, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{text_run}/maps?view=head&layer=999&head=-3&method=nope&colour=rainbow&sel=zz")
    _wait_title(page, "#maps-head-fig", "layer 0 head 0 · UMAP")
    page.goto(f"{live_app}/runs/{'0' * 32}/maps")
    page.wait_for_function("document.querySelector('#maps-status')?.textContent.includes('No run with id')")
    page.close()
    code, err = api_call(live_app, f"/api/runs/{text_run}/embedding?layer=0&head=0&method=tsne")
    assert code == 400 and "no tsne map" in err["error"]


def test_maps_page_loads_lean(live_app, text_run, browser) -> None:
    """A load draws with assets/vendor/plotly-atlas.min.js (built by scripts/setup.sh), never the full plotly.js nor
    Dash's @babel/polyfill (the bundle defines regeneratorRuntime, which the lazily loaded graph chunk needs),
    and from the layout alone (app/first_page.py: no routing callback); links inside the app still route."""
    from plotly.offline import get_plotlyjs_version

    from app import preload
    from app.main import ASSETS

    assert (ASSETS / preload.SMALL_PLOTLY).is_file(), "scripts/build_plotly.sh has not built the bundle"
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    scripts: list[str] = []
    routed: list[str] = []
    layouts: list[str] = []
    page.on("request", lambda r: scripts.append(r.url) if r.resource_type == "script" else None)
    page.on("request", lambda r: layouts.append(r.url) if "_dash-layout" in r.url else None)
    page.on("request", lambda r: routed.append(r.url) if "_dash-update-component" in r.url
            and "_pages_content" in (r.post_data or "") else None)
    page.goto(f"{live_app}/runs/{text_run}/maps?view=head&layer=1&head=2&method=umap")
    _wait_title(page, "#maps-head-fig", "layer 1 head 2 · UMAP")
    assert page.evaluate("window.Plotly.version") == get_plotlyjs_version()
    assert page.evaluate(f"{PLOT.format(sel='#maps-head-fig')}._fullData.map(t => t.type)")[:2] == ["scattergl"] * 2
    assert any("plotly-atlas.min.js" in u for u in scripts)
    assert not any(preload.FULL_PLOTLY in u for u in scripts), scripts
    assert not any("/deps/polyfill@" in u for u in scripts), scripts  # the bundle defines regeneratorRuntime
    assert page.evaluate("typeof window.regeneratorRuntime.mark") == "function"
    assert page.title() == "Query-key maps · Attention Atlas"
    page.wait_for_timeout(500)
    assert routed == []  # the page came in the layout
    assert len(layouts) == 1  # preloaded (app/preload.py), and the renderer took that response

    page.click("header >> text=Recent runs")  # in-app navigation: the routing callback renders the next page
    page.wait_for_url(f"{live_app}/runs")
    page.wait_for_function("document.title === 'Recent runs · Attention Atlas'")
    assert len(routed) == 1
    page.go_back()
    _wait_title(page, "#maps-head-fig", "layer 1 head 2 · UMAP")
    page.goto(f"{live_app}/runs/{text_run}/maps")
    _wait_title(page, "#maps-matrix", "UMAP maps of all heads")
    page.close()


def test_image_run_points_are_patches(live_app, worker, cache, browser) -> None:
    digests = []
    for row in (0, 1, 2):
        data = digit_png(row)
        digests.append(hashlib.sha256(data).hexdigest())
        cache.put_blob(digests[-1], data)
    run_id = submit_run(live_app, {"model": "digits-vit", "kind": "image", "prompts": digests, "options": {
        "analyses": ["attention", "embedding"], "embedding_methods": ["pca"]}})
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{live_app}/runs/{run_id}/maps?view=head&layer=1&head=2&method=pca")
    _wait_title(page, "#maps-head-fig", "layer 1 head 2 · PCA")
    _, api = api_call(live_app, f"/api/runs/{run_id}/embedding?layer=1&head=2&method=pca")
    target = next(p for p in api["points"] if p["kind"] == "query" and p["token"] == "patch r3 c4")
    label = _hover_and_click(page, "#maps-head-fig", target["x"], target["y"], "sel=q.")
    assert "patch r3 c4" in label and f"image {target['prompt']}" in label
    page.wait_for_selector("#maps-token-fig .heatmaplayer", state="attached", timeout=30_000)
    assert page.evaluate(f"{PLOT.format(sel='#maps-token-fig')}._fullData.some(t => t.type === 'image')")
    page.close()


def test_new_analysis_page_sets_map_options(live_app, worker, browser) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    page.check("#new-analyses input[value=embedding]")
    page.check("#new-map-methods input[value=pca]")
    page.uncheck("#new-map-methods input[value=umap]")
    page.fill("#new-map-points", "60")  # below the minimum: refused with a message, nothing submitted
    page.click("#new-submit")
    page.wait_for_function("document.querySelector('#new-message')?.textContent.includes('between 100 and 50,000')")
    page.fill("#new-map-points", "400")
    page.click("#new-submit")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}$"), timeout=30_000)
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    final = wait_done(live_app, run_id, timeout=300)
    assert final["status"] == "done", final
    assert final["options"]["embedding_methods"] == ["pca"] and final["options"]["max_points_per_head"] == 400
    page.wait_for_selector("#run-link-maps", timeout=60_000)
    page.click("#run-link-maps")
    _wait_title(page, "#maps-matrix", "PCA maps of all heads")
    assert page.locator("#maps-method").inner_text().strip() == "PCA"
    page.close()
