"""Compare two runs' layer x head grids side by side (two models, or two prompt sets on one model).

``/compare?a=<run_id>&b=<run_id>&metric=sink_first``. Runs are picked from dropdowns of recent runs with per-head
metrics; both wait behind the one run gate (:func:`app.run_gate.pair_poll`), and the difference ``B - A`` is
drawn when the grids have the same shape. Data: :mod:`app.compare_data`. The view lives in the URL (the layout
reads it, :func:`app.run_gate.sync_url` writes it).
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from app import compare_data, state
from app.components import alert, empty_figure, empty_state, field, figure_kwargs, help_text, in_layout, store
from app.run_gate import pair_at_layout, pair_poll, pair_poll_interval, sync_url
from backend import figures_sinks as fs
from backend.vocab import GRID_METRICS

dash.register_page(__name__, path="/compare", title="Compare runs · Attention Atlas", name="Compare runs")

HIDDEN, SHOWN = {"display": "none"}, {"display": "block"}
ANALYSIS = "metrics"


def layout(a: str | None = None, b: str | None = None, metric: str | None = None, **_query: str) -> html.Div:
    metric = metric if metric in GRID_METRICS else GRID_METRICS[0]
    a, b = (a or "").strip() or None, (b or "").strip() or None
    try:
        options = compare_data.run_options(ANALYSIS, keep=(a, b))
    except state.REDIS_ERRORS:
        return html.Div(className="card", children=[html.H2("Compare two runs"), alert(state.REDIS_DOWN, "warn")])
    if len(options) < 2:
        return html.Div(className="card", children=[html.H2("Compare two runs"), empty_state(
            "Two runs are needed", f"{len(options)} run with per-head metrics so far. Compare two models on the same "
            "prompts, or one model on two prompt sets: submit runs with the “Per-head metrics” analysis "
            "(on by default), then come back here.", [("New analysis", "/"), ("Recent runs", "/runs")],
            state_id="compare-empty")])
    data, stop, status = pair_at_layout(a, b, compare_data.sinks_side, ANALYSIS)
    # a cached pair's figures are in the layout: the page needs no callback round before them
    body_style, fig_a, fig_b, text_a, text_b, diff_fig, diff_style, message = render(data, metric)
    return html.Div([
        dcc.Location(id="compare-url", refresh=False),
        store("compare-data", data),
        pair_poll_interval("compare", stop),
        html.Div(className="card", children=[
            html.H2(["Compare two runs ", help_text(fs.METRICS["sink_first"]["help"])]),
            html.P("Pick two runs: two models on the same prompts, or one model on two prompt sets.", className="muted"),
            html.Div(className="row", children=[
                field("Run A", dcc.Dropdown(id="compare-a", options=options, value=a, placeholder="pick run A"), "380px"),
                field("Run B", dcc.Dropdown(id="compare-b", options=options, value=b, placeholder="pick run B"), "380px"),
                field("Metric", dcc.Dropdown(id="compare-metric", clearable=False, value=metric,
                                             options=[{"label": fs.METRICS[m]["label"], "value": m}
                                                      for m in GRID_METRICS]), "280px"),
            ]),
            html.Div(id="compare-status", children=status),
            html.Div(id="compare-message", children=message),
        ]),
        html.Div(id="compare-body", style=body_style, children=[
            html.Div(className="grid2", children=[
                html.Div(className="card", children=[
                    html.Div(id="compare-a-text", className="muted", children=in_layout(text_a)),
                    dcc.Graph(id="compare-grid-a", config={"displaylogo": False}, **figure_kwargs(fig_a))]),
                html.Div(className="card", children=[
                    html.Div(id="compare-b-text", className="muted", children=in_layout(text_b)),
                    dcc.Graph(id="compare-grid-b", config={"displaylogo": False}, **figure_kwargs(fig_b))]),
            ]),
            html.Div(id="compare-diff-card", className="card", style=diff_style, children=[
                dcc.Graph(id="compare-diff", config={"displaylogo": False}, **figure_kwargs(diff_fig)),
            ]),
        ]),
    ])


@callback(
    Output("compare-data", "data"), Output("compare-poll", "disabled"), Output("compare-status", "children"),
    Input("compare-poll", "n_intervals"), Input("compare-a", "value"), Input("compare-b", "value"),
    prevent_initial_call=True,  # the layout holds the first answer (pair_at_layout)
)
def poll(_n: int, a: str | None, b: str | None) -> tuple[Any, bool, Any]:
    """Wait for both runs, then hand their grids to :func:`render`."""
    return pair_poll(a, b, compare_data.sinks_side, ANALYSIS, ctx.triggered_id in ("compare-a", "compare-b"))


@callback(
    Output("compare-body", "style"), Output("compare-grid-a", "figure"), Output("compare-grid-b", "figure"),
    Output("compare-a-text", "children"), Output("compare-b-text", "children"), Output("compare-diff", "figure"),
    Output("compare-diff-card", "style"), Output("compare-message", "children"),
    Input("compare-data", "data"), Input("compare-metric", "value"), prevent_initial_call=True,  # in the layout
)
def render(data: dict[str, Any] | None, metric: str) -> tuple:
    if not data or metric not in GRID_METRICS:
        return (HIDDEN,) + (no_update,) * 5 + (HIDDEN, "")
    a, b = data["a"], data["b"]
    grid_a, grid_b, zmax = compare_data.grids(a, b, metric)
    label = fs.METRICS[metric]["label"]
    messages = [alert(f"Run {s} has no {label} (an older run, or a metric this model does not have).", "info")
                for s, g in (("A", grid_a), ("B", grid_b)) if g is None]
    fig_a, fig_b = (fs.head_grid(g, metric, f"{s}: {label}", zmax=zmax) if g is not None else
                    empty_figure(f"Run {s} has no {label}") for s, g in (("A", grid_a), ("B", grid_b)))
    diff_fig, diff_style = no_update, HIDDEN
    if grid_a is not None and grid_b is not None:
        if grid_a.shape == grid_b.shape:
            diff_fig, diff_style = fs.diff_grid(grid_a, grid_b, metric), SHOWN
        else:
            messages.append(alert(f"The grids differ in shape ({grid_a.shape[0]} x {grid_a.shape[1]} vs "
                                  f"{grid_b.shape[0]} x {grid_b.shape[1]}): no difference map.", "info"))
    return (SHOWN, fig_a, fig_b, compare_data.describe("A", a), compare_data.describe("B", b), diff_fig, diff_style,
            messages)


def _view_query(a: str | None, b: str | None, metric: str | None, _data: Any) -> dict[str, str]:
    return {k: v for k, v in (("a", a), ("b", b), ("metric", metric)) if v}


sync_url("compare-url", [("compare-a", "value"), ("compare-b", "value"), ("compare-metric", "value")],
         ("compare-data", "data"), _view_query)
