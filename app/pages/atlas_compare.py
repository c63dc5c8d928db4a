"""Two runs' head atlases compared: heads side by side, and which roles appear, move or vanish.

``/atlas/compare?a=<run>&b=<run>`` (the URL keeps both). Runs are picked from dropdowns of recent runs with head
roles; both wait behind the one run gate (:func:`app.run_gate.pair_poll`). Heads are matched by (layer, head)
when both models have the same shape (two checkpoints of one model); otherwise roles are compared by their counts
per quarter of relative depth (:func:`backend.roles.compare_roles`). Data: :mod:`app.compare_data`.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, ctx, dcc, html, no_update

from app import compare_data, state
from app.components import alert, empty_state, field, figure_kwargs, in_layout, plain_table, store
from app.run_gate import pair_at_layout, pair_poll, pair_poll_interval, sync_url
from backend import figures_atlas

dash.register_page(__name__, path="/atlas/compare", title="Compare head atlases · Attention Atlas",
                   name="Compare head atlases")

HIDDEN, SHOWN = {"display": "none"}, {"display": "block"}
ANALYSIS = "roles"


ROLE_COLUMNS = [("role", "role"), ("status", "from A to B"), ("count_a", "heads in A"), ("count_b", "heads in B"),
                ("kept", "same heads"), ("gained", "new heads"), ("lost", "heads lost"), ("depth_a", "mean depth A"),
                ("depth_b", "mean depth B")]
HEAD_COLUMNS = [("layer", "layer"), ("head", "head"), ("role_a", "role in A"), ("role_b", "role in B"),
                ("change", "change")]


def _table(table_id: str, children: list) -> html.Div:
    """A plain table (one row per role, or per head of the model: it scrolls past a screenful); ``children``:
    :func:`app.components.plain_table`."""
    return html.Div(className="plain-table-wrap", children=html.Table(id=table_id, className="plain-table",
                                                                      children=children))


def layout(a: str | None = None, b: str | None = None, **_query: str) -> html.Div:
    a, b = (a or "").strip() or None, (b or "").strip() or None
    try:
        opts = compare_data.run_options(ANALYSIS, keep=(a, b))
    except state.REDIS_ERRORS:
        return html.Div(className="card", children=[html.H2("Compare head atlases"), alert(state.REDIS_DOWN, "warn")])
    if len(opts) < 2:
        return html.Div(className="card", children=[html.H2("Compare head atlases"), empty_state(
            "Two runs with head roles are needed", f"{len(opts)} run with head roles so far. Submit two runs (two "
            "models, or two checkpoints of one model) with the “Head roles” analysis, or add head roles to a "
            "finished run from its atlas page, then come back here.", [("New analysis", "/"), ("Recent runs", "/runs")],
            state_id="cmp-empty")])
    data, stop, status = pair_at_layout(a, b, compare_data.atlas_side, ANALYSIS)
    # a cached pair's figures and tables are in the layout: the page needs no callback round before them
    body_style, grids_fig, depth_fig, roles, heads, mode, heads_style = render(data)
    return html.Div([
        dcc.Location(id="cmp-url", refresh=False),
        store("cmp-data", data),
        pair_poll_interval("cmp", stop),
        html.Div(className="card", children=[
            html.H2("Compare head atlases"),
            html.P("Pick two runs with head roles (two models, or two checkpoints of one model, on any prompts).",
                   className="muted"),
            html.Div(className="row", children=[
                field("Run A", dcc.Dropdown(id="cmp-a", options=opts, value=a, placeholder="pick run A"), "420px"),
                field("Run B", dcc.Dropdown(id="cmp-b", options=opts, value=b, placeholder="pick run B"), "420px"),
            ]),
            html.Div(id="cmp-status", children=status),
        ]),
        html.Div(id="cmp-body", style=body_style, children=[
            html.Div(className="card", children=[
                html.Div(id="cmp-mode", className="muted", children=in_layout(mode)),
                dcc.Graph(id="cmp-grids", config={"displaylogo": False}, **figure_kwargs(grids_fig)),
            ]),
            html.Div(className="card", children=[
                html.H3("Roles: appear, move, vanish"),
                _table("cmp-roles", in_layout(roles, plain_table(ROLE_COLUMNS, []))),
                dcc.Graph(id="cmp-depth", config={"displaylogo": False}, **figure_kwargs(depth_fig)),
            ]),
            html.Div(id="cmp-heads-card", className="card", style=in_layout(heads_style, None), children=[
                html.H3("Heads whose dominant role changed"),
                _table("cmp-heads", in_layout(heads, plain_table(HEAD_COLUMNS, []))),
            ]),
        ]),
    ])


@callback(
    Output("cmp-data", "data"), Output("cmp-poll", "disabled"), Output("cmp-status", "children"),
    Input("cmp-poll", "n_intervals"), Input("cmp-a", "value"), Input("cmp-b", "value"),
    prevent_initial_call=True,  # the layout holds the first answer (pair_at_layout)
)
def poll(_n: int, a: str | None, b: str | None) -> tuple[Any, bool, Any]:
    """Wait for both runs, then hand their atlases to :func:`render`."""
    return pair_poll(a, b, compare_data.atlas_side, ANALYSIS, ctx.triggered_id in ("cmp-a", "cmp-b"))


@callback(
    Output("cmp-body", "style"), Output("cmp-grids", "figure"), Output("cmp-depth", "figure"),
    Output("cmp-roles", "children"), Output("cmp-heads", "children"), Output("cmp-mode", "children"),
    Output("cmp-heads-card", "style"),
    Input("cmp-data", "data"), prevent_initial_call=True,  # in the layout
)
def render(data: dict[str, Any] | None) -> tuple:
    if not data:
        return (HIDDEN,) + (no_update,) * 6
    da, db = data["a"], data["b"]
    c = compare_data.roles_comparison(da, db)
    return (
        SHOWN,
        figures_atlas.compare_grids(c["dom_a"], c["dom_b"], c["scores_a"], c["scores_b"], f"A: {da['label']}",
                                    f"B: {db['label']}"),
        figures_atlas.role_depth_bars(c["comparison"], "A", "B"),
        plain_table(ROLE_COLUMNS, c["roles"]), plain_table(HEAD_COLUMNS, c["heads"]), c["mode"],
        SHOWN if c["matched"] else HIDDEN,
    )


sync_url("cmp-url", [("cmp-a", "value"), ("cmp-b", "value")], ("cmp-data", "data"),
         lambda a, b, _data: {k: v for k, v in (("a", a), ("b", b)) if v})
