"""Unknown pages answer 404: the server sets the status of the app's HTML page when the path names no page (or a
run that does not exist), and the Dash app draws its "page not found" view (``app/pages/not_found_404.py``),
also for client-side navigation to such a path."""

from __future__ import annotations

from dash import _pages, dcc, html
from flask import Flask, Response, request

from app import state

RUN_PREFIX = "runs/"


def unknown_path(path: str) -> bool:
    """True when ``path`` (e.g. ``/runs/<id>/maps``) matches no page of the app, or matches a page template only
    through a variable holding a ``/`` (``/runs/x/nope`` would otherwise open the run page of run ``x/nope``)."""
    page, variables = _pages._path_to_page(path.strip("/"))
    if not page or page["module"].split(".")[-1] == "not_found_404":
        return True
    return any(not v or "/" in v for v in (variables or {}).values())


def unknown_run(path: str) -> bool:
    """True when ``path`` is a run's page and that run is not in the cache (malformed ids never are). When Redis
    is away the run is not called unknown: the page says Redis is away."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] + "/" != RUN_PREFIX:
        return False
    if not state.RUN_ID.match(parts[1]):
        return True
    try:
        return state.cache().manifest(parts[1]) is None
    except state.REDIS_ERRORS:
        return False


def install(server: Flask) -> None:
    """Give the app's HTML page status 404 at unknown paths (Dash serves it, with status 200, at every path)."""

    @server.after_request
    def _not_found(resp: Response) -> Response:
        if (request.method == "GET" and resp.status_code == 200 and resp.mimetype == "text/html"
                and not request.path.startswith(("/_", "/assets/", "/api/", "/docs/"))
                and (unknown_path(request.path) or unknown_run(request.path))):
            resp.status_code = 404
        return resp


def view(detail: str = "There is no page at this address.") -> html.Div:
    """The not-found card: what happened and where to go instead."""
    return html.Div(className="card not-found", id="not-found", children=[
        html.H2("Page not found"),
        html.P(detail),
        html.P("Pages of Attention Atlas:", className="muted"),
        html.Ul([
            html.Li(dcc.Link("New analysis", href="/", className="navlink", id="not-found-home")),
            html.Li(dcc.Link("Recent runs (each run links to its views)", href="/runs", className="navlink",
                             id="not-found-runs")),
            html.Li(dcc.Link("Compare two runs", href="/compare", className="navlink")),
        ]),
    ])
