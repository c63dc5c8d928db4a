"""The Dash app: root layout, pages, JSON API, all on one Flask server.

``create_app()`` builds a fresh app (tests call it); ``server`` is the WSGI entry point.
"""

from __future__ import annotations

from pathlib import Path

from dash import Dash, dcc, html

from app import access, api, first_page, not_found, preload
from backend.settings import get_settings

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "assets"
REFERENCES = HERE.parent / "docs" / "REFERENCES.md"
REFERENCES_URL = "/docs/references"
"""The metric definitions, their sources and variants (docs/REFERENCES.md), served as Markdown text."""


def root_layout() -> html.Div:
    return html.Div(className="atlas", children=[
        html.Header(className="topbar", children=[
            dcc.Link("Attention Atlas", href="/", className="brand"),
            html.Nav(children=[
                dcc.Link("New analysis", href="/", className="navlink"),
                dcc.Link("Recent runs", href="/runs", className="navlink"),
                dcc.Link("Compare runs", href="/compare", className="navlink", id="nav-compare"),
                dcc.Link("Compare atlases", href="/atlas/compare", className="navlink", id="nav-atlas-compare"),
                html.A("Definitions", href=REFERENCES_URL, target="_blank", rel="noopener", className="navlink",
                       id="nav-definitions", title="Every metric's definition, the released code it follows, and "
                                                     "the labelled variants (docs/REFERENCES.md)"),
            ]),
        ]),
        html.Main(first_page.container(), className="content"),  # the first page rendered in (app/first_page.py)
    ])


def create_app() -> Dash:
    app = Dash(
        __name__, use_pages=True, pages_folder=str(HERE / "pages"), assets_folder=str(ASSETS),
        suppress_callback_exceptions=True, title="Attention Atlas", update_title=None,
        compress=True,  # flask-compress: responses (figures, bundles) in zstd/brotli/gzip, as the browser accepts
    )
    app.layout = root_layout
    app.server.after_request(first_page.set_referrer_policy)
    preload.install(app)  # plotly.js and the dcc chunks asked for at once and cached (app/preload.py)
    access.install(app.server, get_settings().access_token)  # first: it guards everything registered below
    api.register(app.server)
    not_found.install(app.server)
    app.server.add_url_rule(REFERENCES_URL, "references", _references)
    app.server.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    return app


def _references():
    """docs/REFERENCES.md as UTF-8 Markdown text (404 with a message when the file is not installed)."""
    from flask import Response  # noqa: PLC0415

    try:
        return Response(REFERENCES.read_text(encoding="utf-8"), mimetype="text/markdown; charset=utf-8")
    except OSError:
        return Response("docs/REFERENCES.md is not installed with this copy of Attention Atlas.", status=404,
                        mimetype="text/plain")


def __getattr__(name: str):  # lazy WSGI entry point: `gunicorn app.main:server`
    if name == "server":
        return create_app().server
    raise AttributeError(name)
