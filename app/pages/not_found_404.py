"""The "page not found" view: Dash draws it at any path that names no page (the server answers such paths
with status 404, see ``app/not_found.py``), also when a link inside the app leads there."""

from __future__ import annotations

import dash
from dash import html

from app.not_found import view

dash.register_page(__name__, path="/not-found", title="Page not found · Attention Atlas", name="Page not found")


def layout(**_query: str) -> html.Div:
    return view()
