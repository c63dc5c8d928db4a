"""Small reusable pieces of layout shared by pages."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import dcc, html, no_update

import backend.figures  # noqa: F401  (registers plotly's default template: backend.figures.TEMPLATE)


def progress_bar(fraction: float, stage: str, status: str, bar_id: str = "progress") -> html.Div:
    """An accessible progress bar (role=progressbar) with percent and stage text."""
    pct = max(0.0, min(100.0, 100.0 * float(fraction or 0.0)))
    return html.Div(className=f"progress status-{status}", id=bar_id, children=[
        html.Div(className="progress-track", role="progressbar", **{
            "aria-valuenow": f"{pct:.0f}", "aria-valuemin": "0", "aria-valuemax": "100",
        }, children=html.Div(className="progress-fill", style={"width": f"{pct:.1f}%"})),
        html.Span(f"{pct:.0f}% · {stage}", className="progress-label"),
    ])


def alert(message: str, kind: str = "error", alert_id: str | None = None) -> html.Div:
    props = {"id": alert_id} if alert_id else {}
    return html.Div(message, className=f"alert alert-{kind}", role="alert", **props)


def empty_state(title: str, message: str, links: list[tuple[str, str]], state_id: str | None = None) -> html.Div:
    """What a page shows when there is nothing to show yet: a title, what is missing and how to get it, and
    links (``(text, href)``) to the pages that fix it."""
    props = {"id": state_id} if state_id else {}
    return html.Div(className="empty-state", **props, children=[
        html.H3(title), html.P(message, className="muted"),
        html.Div(className="row", children=[dcc.Link(text, href=href, className="btn") for text, href in links]),
    ])


def help_text(text: str) -> html.Span:
    return html.Span("?", className="help", title=text)


def field(label: Any, child: Any, width: str = "160px") -> html.Div:
    """A labelled control in a ``.row``."""
    return html.Div(className="field", style={"minWidth": width}, children=[html.Label(label), child])


def plain_table(columns: list[tuple[str, str]], rows: list[dict[str, Any]] | None) -> list:
    """The children of an ``html.Table`` (class ``plain-table``): a header of ``columns`` (``(key, title)``) and one row
    per dict of ``rows``, each cell marked ``data-column=<key>``. For short tables a page can show without sorting or
    filtering: a dash_table.DataTable costs its script chunk and its React rendering on every load (~0.15 s of the
    atlas comparison's load on 2 cores)."""
    head = html.Thead(html.Tr([html.Th(title, **{"data-column": key}) for key, title in columns]))
    body = html.Tbody([html.Tr([html.Td(_cell(row.get(key)), **{"data-column": key}) for key, _ in columns])
                       for row in rows or []])
    return [head, body]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def empty_figure(message: str = "", height: int = 300) -> go.Figure:
    """A blank figure, optionally with a centred message (before data arrives, or when it is unavailable)."""
    fig = go.Figure()
    fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")]
                      if message else [])
    return fig


def query_int(value: Any, default: int = 0) -> int:
    """A non-negative integer from a URL query value (negative -> 0, not a number -> ``default``)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default


def in_layout(value: Any, default: Any = None) -> Any:
    """A view function's output placed in a page's layout (a cached run's page draws before any callback):
    ``default`` where the view leaves the component as it is (``no_update``)."""
    return default if value is no_update else value


def store(id_: str, data: Any) -> dcc.Store:
    """A store holding ``data``; without a ``data`` prop when None (a Store given ``data=None`` sets its data on
    mount, which would fire every callback on it: a cached page's first figures are already in the layout)."""
    return dcc.Store(id=id_) if data is None else dcc.Store(id=id_, data=data)


def figure_kwargs(fig: Any) -> dict:
    """A dcc.Graph's ``figure`` keyword for a page's layout: none where the view drew nothing (``no_update`` or
    None)."""
    return {} if fig is no_update or fig is None else {"figure": fig}
