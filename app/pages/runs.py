"""Recent runs: a table linking to each run page."""

from __future__ import annotations

import time

import dash
from dash import dcc, html

from app import state
from app.components import alert
from backend.jobs import run_analyses

dash.register_page(__name__, path="/runs", title="Recent runs · Attention Atlas", name="Recent runs")


def layout(**_query: str) -> html.Div:
    try:
        runs = state.cache().recent_runs(100)
    except state.REDIS_ERRORS:
        return html.Div([html.H2("Recent runs"), alert(state.REDIS_DOWN, "warn")])
    rows = []
    for r in runs:
        spec = r.get("spec") or {}
        first = (spec.get("inputs") or [""])[0]
        rows.append(html.Tr([
            html.Td(dcc.Link(r["run_id"][:12], href=f"/runs/{r['run_id']}")),
            html.Td((r.get("model") or {}).get("ref", "")),
            html.Td(f"{len(spec.get('inputs', []))}"),
            html.Td(first[:80] if spec.get("kind") == "text" else "image(s)"),
            html.Td(", ".join(a for a in run_analyses(r) if a != "attention") or "attention only",
                    className="analyses"),
            html.Td(r["status"] if r["status"] == "done" else f"{r['status']} at {100 * float(r.get('progress') or 0):.0f}%"),
            html.Td(time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))),
        ]))
    table = html.Table(className="runs", children=[
        html.Thead(html.Tr([html.Th(h) for h in ("run", "model", "inputs", "first input", "analyses", "status", "created")])),
        html.Tbody(rows),
    ]) if rows else html.P("No runs yet. Start a new analysis.", className="muted")
    return html.Div([html.H2("Recent runs"), html.Div(className="card", children=table)])
