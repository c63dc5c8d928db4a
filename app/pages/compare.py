"""Compare two runs' layer x head grids side by side (two models, or two prompt sets on one model).

``/compare?a=<run_id>&b=<run_id>&metric=sink_first``. The difference ``B - A`` is drawn when the grids
have the same shape (same layer and head counts). State lives in the URL (written by the render
callback; initial values come from the layout's query arguments).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import numpy as np
from dash import Input, Output, callback, dcc, html, no_update

from app import state
from app.components import alert, help_text
from backend import figures_sinks as fs
from backend.vocab import GRID_METRICS

dash.register_page(__name__, path="/compare", title="Compare runs · Attention Atlas", name="Compare runs")

HIDDEN, SHOWN = {"display": "none"}, {"display": "block"}


def layout(a: str | None = None, b: str | None = None, metric: str | None = None, **_query: str) -> html.Div:
    metric = metric if metric in GRID_METRICS else "sink_first"
    return html.Div([
        dcc.Location(id="compare-url", refresh=False),
        dcc.Interval(id="compare-retry", interval=1500, n_intervals=0, disabled=True),
        html.Div(className="card", children=[
            html.H2(["Compare two runs ", help_text(fs.METRICS["sink_first"]["help"])]),
            html.P("Paste two run ids (from the run pages or the recent runs list): two models on the same prompts, "
                   "or one model on two prompt sets.", className="muted"),
            html.Div(className="row", children=[
                html.Div(className="field", children=[
                    html.Label("Run A"), dcc.Input(id="compare-a", value=(a or "").strip(), debounce=True,
                                                   placeholder="run id A", style={"width": "300px"})]),
                html.Div(className="field", children=[
                    html.Label("Run B"), dcc.Input(id="compare-b", value=(b or "").strip(), debounce=True,
                                                   placeholder="run id B", style={"width": "300px"})]),
                html.Div(className="field", children=[
                    html.Label("Metric"),
                    dcc.Dropdown(id="compare-metric", clearable=False, value=metric, style={"minWidth": "280px"},
                                 options=[{"label": fs.METRICS[m]["label"], "value": m} for m in GRID_METRICS])]),
            ]),
            html.Div(id="compare-message"),
        ]),
        html.Div(className="grid2", children=[
            html.Div(className="card", children=[html.Div(id="compare-a-text", className="muted"),
                                                 dcc.Graph(id="compare-grid-a", config={"displaylogo": False})]),
            html.Div(className="card", children=[html.Div(id="compare-b-text", className="muted"),
                                                 dcc.Graph(id="compare-grid-b", config={"displaylogo": False})]),
        ]),
        html.Div(id="compare-diff-card", className="card", style=HIDDEN, children=[
            dcc.Graph(id="compare-diff", config={"displaylogo": False}),
        ]),
    ])


def run_grid(run_id: str, metric: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``[layer, head]`` grid of ``metric`` and a short description of the run."""
    if not state.RUN_ID.match(run_id or ""):
        raise state.ViewError(f"'{run_id}' is not a run id (32 hex characters)")
    values, info = state.metrics(run_id)
    if metric not in values:
        raise state.ViewError(f"run {run_id[:8]} has no {metric} (submit it with the 'metrics' analysis)")
    m = state.run_status(run_id) or {}
    desc = {"model": (m.get("model") or {}).get("ref"), "n_prompts": len((m.get("spec") or {}).get("inputs", [])),
            "sink_rate": values.get("sink_rate")}
    return np.asarray(values[metric], dtype=np.float64), desc


def _describe(label: str, run_id: str, d: dict[str, Any], grid: np.ndarray) -> str:
    rate = f", sink rate {d['sink_rate']:.3f}" if isinstance(d.get("sink_rate"), float) else ""
    return (f"{label}: {run_id[:12]} · {d['model']} · {d['n_prompts']} prompt(s) · "
            f"{grid.shape[0]} x {grid.shape[1]}{rate}")


def _one(label: str, run_id: str, metric: str) -> tuple[str, np.ndarray | None, Any, bool]:
    """Description, grid, message and retry flag of one side."""
    if not run_id:
        return f"Run {label}: paste a run id", None, None, False
    try:
        grid, desc = run_grid(run_id, metric)
    except state.NotReady as exc:
        return f"Run {label}: {exc}", None, None, True
    except (state.ViewError, LookupError) as exc:
        return "", None, alert(f"Run {label}: {exc}", "warn"), False
    return _describe(f"Run {label}", run_id, desc, grid), grid, None, False


@callback(
    Output("compare-grid-a", "figure"), Output("compare-grid-b", "figure"), Output("compare-a-text", "children"),
    Output("compare-b-text", "children"), Output("compare-diff", "figure"), Output("compare-diff-card", "style"),
    Output("compare-message", "children"), Output("compare-url", "search"), Output("compare-retry", "disabled"),
    Input("compare-a", "value"), Input("compare-b", "value"), Input("compare-metric", "value"),
    Input("compare-retry", "n_intervals"),
)
def render(a, b, metric, _n):
    a, b = (a or "").strip(), (b or "").strip()
    search = "?" + urlencode({k: v for k, v in (("a", a), ("b", b), ("metric", metric)) if v})
    try:
        sides = [_one("A", a, metric), _one("B", b, metric)]
    except state.REDIS_ERRORS:
        return (no_update,) * 6 + (alert(state.REDIS_DOWN, "warn"), no_update, False)
    (text_a, grid_a, msg_a, retry_a), (text_b, grid_b, msg_b, retry_b) = sides
    messages = [m for m in (msg_a, msg_b) if m is not None]
    finite = [g[np.isfinite(g)] for g in (grid_a, grid_b) if g is not None]
    zmax = max((float(f.max()) for f in finite if f.size), default=None)  # one colour scale for both sides
    zmax = 1.0 if metric in ("sink_first", "sink_special") else zmax
    fig_a, fig_b = (no_update if g is None else fs.head_grid(g, metric, f"{label}: {fs.METRICS[metric]['label']}", zmax=zmax)
                    for label, g in (("A", grid_a), ("B", grid_b)))
    diff_fig, diff_style = no_update, HIDDEN
    if grid_a is not None and grid_b is not None:
        if grid_a.shape == grid_b.shape:
            diff_fig, diff_style = fs.diff_grid(grid_a, grid_b, metric), SHOWN
        else:
            messages.append(alert(f"The grids differ in shape ({grid_a.shape[0]} x {grid_a.shape[1]} vs "
                                  f"{grid_b.shape[0]} x {grid_b.shape[1]}): no difference map.", "info"))
    return (fig_a, fig_b, text_a, text_b, diff_fig, diff_style, messages, search, not (retry_a or retry_b))
