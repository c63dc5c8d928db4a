"""Every page asks for plotly.js and the dcc chunks of graphs and dropdowns in its head, at the URLs Dash's
renderer requests them by, and those unversioned scripts are cacheable (fingerprinted bundles keep their year)."""

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
    assert hrefs == [f"/_dash-component-suites/{p}" for p in preload.PRELOADED]
    assert "/_dash-component-suites/plotly/package_data/plotly.min.js" in hrefs  # window._dashPlotlyJSURL
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
