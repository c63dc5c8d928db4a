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

When ``assets/vendor/plotly-atlas.min.js`` is there (plotly.js with only the trace types the app draws, built by
``scripts/build_plotly.sh``), Dash includes it in every page as an asset script; it sets ``window.Plotly``, which
dcc's graphs use instead of fetching the full plotly.js, so the full one is not preloaded. Asset URLs carry their
file's modification time (``?m=``), so they get a year's lifetime like Dash's fingerprinted bundles. That bundle
also defines ``regeneratorRuntime`` (its banner says so), the one global of Dash's ``@babel/polyfill`` that Dash's
scripts still use in a current browser: the pages then leave out that 100 kB polyfill (:func:`drop_polyfill`).

The app's layout (``_dash-layout``, which holds the page's first figures: :mod:`app.first_page`) is preloaded too:
the server computes it while the browser loads and boots the scripts, and Dash's renderer's own request for it
(same URL, same-origin credentials) takes the preloaded response instead of asking again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from dash import Dash
from flask import Response, request

SUITES = "_dash-component-suites/"
FULL_PLOTLY = "plotly/package_data/plotly.min.js"
"""The full plotly.js, as Dash's renderer asks for it (``window._dashPlotlyJSURL``)."""
PRELOADED = (
    FULL_PLOTLY,
    "dash/dcc/async-graph.js",
    "dash/dcc/async-dropdown.js",
)
"""Script paths under ``_dash-component-suites/`` that Dash requests by these fixed names (the full plotly.js and
dcc's chunk names)."""
SMALL_PLOTLY = Path("vendor") / "plotly-atlas.min.js"
"""The small plotly.js bundle, relative to the assets folder (``scripts/build_plotly.sh``)."""
POLYFILL_TAG = re.compile(r'<script src="[^"]*/deps/polyfill@[^"]*"></script>\s*')
"""Dash's script tag of ``@babel/polyfill`` (``dash/deps/polyfill@7.x.min.js``)."""
MAX_AGE_S = 3600
STALE_S = 7 * 24 * 3600
ASSET_MAX_AGE_S = 365 * 24 * 3600


def preloaded(assets_folder: str | Path) -> tuple[str, ...]:
    """:data:`PRELOADED`, without the full plotly.js when the small bundle is in ``assets_folder``."""
    small = (Path(assets_folder) / SMALL_PLOTLY).is_file()
    return tuple(p for p in PRELOADED if not (small and p == FULL_PLOTLY))


def bundle_has_regenerator(assets_folder: str | Path) -> bool:
    """Whether the small plotly.js bundle in ``assets_folder`` defines ``regeneratorRuntime`` (its banner names
    regenerator-runtime; bundles built before it was added do not)."""
    try:
        with open(Path(assets_folder) / SMALL_PLOTLY, encoding="utf-8", errors="replace") as f:
            return "regenerator-runtime" in f.readline(1000)
    except OSError:
        return False


def drop_polyfill(scripts: str) -> str:
    """``scripts`` (the page's script tags) without Dash's ``@babel/polyfill``."""
    return POLYFILL_TAG.sub("", scripts, count=1)


def preload_links(prefix: str, paths: tuple[str, ...] = PRELOADED) -> str:
    """The ``<link rel=preload>`` tags for ``paths`` under the app's ``requests_pathname_prefix``."""
    return "".join(f'<link rel="preload" as="script" href="{prefix}{SUITES}{path}">' for path in paths)


def cache_lifetimes(assets_path: str) -> Callable[[Response], Response]:
    """An ``after_request`` hook: a component-suite response without a lifetime (the unfingerprinted chunks) gets
    :data:`MAX_AGE_S`, an asset under ``assets_path`` asked for with its modification time (``?m=``, as Dash writes
    asset URLs) a year."""

    def hook(resp: Response) -> Response:
        if resp.status_code not in (200, 304) or resp.cache_control.max_age:
            return resp
        if SUITES in request.path and request.path.endswith(".js"):
            resp.headers["Cache-Control"] = f"public, max-age={MAX_AGE_S}, stale-while-revalidate={STALE_S}"
        elif request.path.startswith(assets_path) and request.args.get("m"):
            resp.headers["Cache-Control"] = f"public, max-age={ASSET_MAX_AGE_S}, immutable"
        return resp

    return hook


def install(app: Dash) -> None:
    """Preload tags in the page template's head and cache lifetimes on the app's server."""
    prefix = app.config.requests_pathname_prefix or "/"
    links = preload_links(prefix, preloaded(app.config.assets_folder))
    # the layout (with the page's first figures, app/first_page.py) is computed while the scripts load and boot
    links += f'<link rel="preload" as="fetch" href="{prefix}_dash-layout" crossorigin>'

    app.index_string = app.index_string.replace("{%metas%}", "{%metas%}\n        " + links, 1)
    if bundle_has_regenerator(app.config.assets_folder):
        interpolate = app.interpolate_index

        def without_polyfill(**kwargs: str) -> str:
            return interpolate(**{**kwargs, "scripts": drop_polyfill(kwargs.get("scripts", ""))})

        app.interpolate_index = without_polyfill  # type: ignore[method-assign]
    routes = app.config.routes_pathname_prefix or "/"
    app.server.after_request(cache_lifetimes(f"{routes}{app.config.assets_url_path.strip('/')}/"))
