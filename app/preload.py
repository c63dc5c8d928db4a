"""Fewer waits before a page's first figure: the scripts Dash loads late are asked for at once, and kept.

Dash loads plotly.js and the dcc chunks of graphs and dropdowns only once its first callbacks have answered
(``async-graph.js``, ``async-dropdown.js`` from ``_dash-component-suites``): a page waits for that round trip, then
for these downloads (plotly.js is 1.4 MB compressed). :func:`install` puts ``<link rel=preload>`` for them in every
page's head, so the browser fetches them while the Dash renderer boots, and gives their responses a cache lifetime:
Dash fingerprints its other bundles (cached for a year) but serves these under fixed names with an ETag only, so a
returning browser asked the server again on every page (a 304, one more round trip before the figure).

These names carry no version: after an upgrade of Dash or plotly a browser may use its cached copy until
:data:`MAX_AGE_S` has passed, then revalidates (``stale-while-revalidate`` lets it use the old copy once more
while it does). Keep the lifetime short for that reason.
"""

from __future__ import annotations

from dash import Dash
from flask import Response, request

SUITES = "_dash-component-suites/"
PRELOADED = (
    "plotly/package_data/plotly.min.js",
    "dash/dcc/async-graph.js",
    "dash/dcc/async-dropdown.js",
)
"""Script paths under ``_dash-component-suites/`` that Dash requests by these fixed names, as its renderer asks
for them (``window._dashPlotlyJSURL`` and dcc's chunk names)."""
MAX_AGE_S = 3600
STALE_S = 7 * 24 * 3600


def preload_links(prefix: str) -> str:
    """The ``<link rel=preload>`` tags for :data:`PRELOADED` under the app's ``requests_pathname_prefix``."""
    return "".join(f'<link rel="preload" as="script" href="{prefix}{SUITES}{path}">' for path in PRELOADED)


def cache_unversioned(resp: Response) -> Response:
    """Give a component-suite response without a lifetime (the unfingerprinted chunks) :data:`MAX_AGE_S`."""
    if (SUITES in request.path and resp.status_code in (200, 304) and not resp.cache_control.max_age
            and request.path.endswith(".js")):
        resp.headers["Cache-Control"] = f"public, max-age={MAX_AGE_S}, stale-while-revalidate={STALE_S}"
    return resp


def install(app: Dash) -> None:
    """Preload tags in the page template's head and cache lifetimes on the app's server."""
    links = preload_links(app.config.requests_pathname_prefix or "/")
    app.index_string = app.index_string.replace("{%metas%}", "{%metas%}\n        " + links, 1)
    app.server.after_request(cache_unversioned)
