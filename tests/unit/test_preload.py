"""Every page asks for the dcc chunks of graphs and dropdowns (and the full plotly.js when the small bundle is not
built) in its head, at the URLs Dash's renderer requests them by, and those unversioned scripts are cacheable
(fingerprinted bundles keep their year); the small plotly.js bundle is an asset script with a year's lifetime."""

from __future__ import annotations

import re

from app import preload


def _client():
    from app.main import create_app

    return create_app().server.test_client()


def test_pages_preload_the_late_scripts_and_they_are_cached() -> None:
    client = _client()
    page = client.get("/runs/0123/maps").get_data(as_text=True)
    head = page.split("</head>", 1)[0]
    hrefs = re.findall(r'<link rel="preload" as="script" href="([^"]+)">', head)
    from app.main import ASSETS

    assert hrefs == [f"/_dash-component-suites/{p}" for p in preload.preloaded(ASSETS)]
    assert "/_dash-component-suites/dash/dcc/async-graph.js" in hrefs
    assert '<link rel="preload" as="fetch" href="/_dash-layout" crossorigin>' in head  # the renderer's request
    small = (ASSETS / preload.SMALL_PLOTLY).is_file()
    assert (f"/_dash-component-suites/{preload.FULL_PLOTLY}" in hrefs) != small  # window._dashPlotlyJSURL
    if small:
        src = re.search(r'<script src="(/assets/vendor/plotly-atlas\.min\.js\?m=[^"]+)"', page).group(1)
        resp = client.get(src)
        assert resp.status_code == 200 and b"plotly.js" in resp.data[:200]
        assert resp.headers["Cache-Control"] == f"public, max-age={preload.ASSET_MAX_AGE_S}, immutable"
        assert client.get("/assets/style.css").headers.get("Cache-Control") != resp.headers["Cache-Control"]  # no ?m=
    for href in hrefs:
        resp = client.get(href)
        assert resp.status_code == 200 and resp.mimetype.endswith("javascript") and len(resp.data) > 1000, href
        assert resp.headers["Cache-Control"] == (f"public, max-age={preload.MAX_AGE_S}, "
                                                 f"stale-while-revalidate={preload.STALE_S}")
        again = client.get(href, headers={"If-None-Match": resp.headers["ETag"]})  # Dash's own revalidation
        assert again.status_code == 304 and f"max-age={preload.MAX_AGE_S}" in again.headers["Cache-Control"]


def test_fingerprinted_bundles_and_other_responses_keep_their_headers() -> None:
    client = _client()
    page = client.get("/").get_data(as_text=True)
    bundle = re.search(r'src="(/_dash-component-suites/dash/dcc/dash_core_components\.v[^"]+\.js)"', page).group(1)
    assert client.get(bundle).headers["Cache-Control"] == "max-age=31536000"  # Dash's year, untouched
    assert "max-age" not in client.get("/").headers.get("Cache-Control", "")  # pages are never cached
    assert "stale-while-revalidate" not in client.get("/docs/references").headers.get("Cache-Control", "")


def test_pages_leave_out_the_polyfill_only_when_the_bundle_defines_regenerator_runtime(tmp_path) -> None:
    """Dash's @babel/polyfill is dropped from the page's scripts when the small bundle's banner names
    regenerator-runtime (the one global Dash's scripts still need); with an older bundle, or none, it stays."""
    from app.main import ASSETS

    client = _client()
    page = client.get("/runs").get_data(as_text=True)
    has = preload.bundle_has_regenerator(ASSETS)
    assert ("/deps/polyfill@" in page) != has
    assert "react-dom@" in page and "dash_renderer" in page  # the other scripts are all there
    assert page.index("react@") < page.index("plotly-atlas.min.js") < page.index("dash_renderer") if has else True

    (tmp_path / "vendor").mkdir()
    bundle = tmp_path / preload.SMALL_PLOTLY
    assert not preload.bundle_has_regenerator(tmp_path)  # no bundle
    bundle.write_text("/* plotly.js 4.1.1 (MIT, Plotly, Inc.): bar */\nvar Plotly;\n")
    assert not preload.bundle_has_regenerator(tmp_path)  # built before regenerator-runtime was added
    bundle.write_text("/* plotly.js 4.1.1: bar; regenerator-runtime 0.14.1 (MIT, Facebook, Inc.) */\nvar Plotly;\n")
    assert preload.bundle_has_regenerator(tmp_path)

    tags = ('<script src="/_dash-component-suites/dash/deps/polyfill@7.12.1.min.js?v=4.4.1&m=1"></script>\n'
            '<script src="/_dash-component-suites/dash/deps/react@18.3.1.min.js?v=4.4.1&m=1"></script>')
    assert preload.drop_polyfill(tags) == '<script src="/_dash-component-suites/dash/deps/react@18.3.1.min.js?v=4.4.1&m=1"></script>'
