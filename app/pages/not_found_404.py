"""The "page not found" view: Dash draws it at any path that names no page (the server answers such paths
with status 404, see ``app/not_found.py``), also when a link inside the app leads there."""

from __future__ import annotations

import dash
from dash import dcc, html

dash.register_page(__name__, path="/not-found", title="Page not found · Attention Atlas", name="Page not found")


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


def layout(**_query: str) -> html.Div:
    return view()
