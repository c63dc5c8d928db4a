"""Two runs' head atlases compared: heads side by side, and which roles appear, move or vanish.

``/atlas/compare?a=<run>&b=<run>`` (the URL keeps both). Heads are matched by (layer, head) when both models
have the same shape (two checkpoints of one model); otherwise roles are compared by their counts per quarter
of relative depth (:func:`backend.roles.compare_roles`).
"""

from __future__ import annotations

from urllib.parse import urlencode

import dash
from dash import Input, Output, callback, dash_table, dcc, html, no_update

from app import atlas_data, state
from app.components import alert
from backend import figures_atlas
from backend import roles as hr

dash.register_page(__name__, path="/atlas/compare", title="Compare head atlases · Attention Atlas",
                   name="Compare head atlases")

STATUS_TEXT = {"appears": "appears in B", "vanishes": "vanishes in B", "moves": "moves", "stays": "stays"}


def _options(*ids: str | None) -> list[dict[str, str]]:
    try:
        opts = atlas_data.runs_with_roles()
    except state.REDIS_ERRORS:
        opts = []
    have = {o["value"] for o in opts}
    return opts + [{"label": i, "value": i} for i in ids if i and i not in have]


def _table(table_id: str, columns: list[tuple[str, str]]) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=table_id, columns=[{"name": n, "id": i} for i, n in columns], data=[], sort_action="native",
        filter_action="native", page_size=20, style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "Inter, system-ui, sans-serif", "fontSize": 13, "padding": "4px 8px"},
        style_header={"fontWeight": 600},
        style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "left"}
                                for c in ("role", "status", "role_a", "role_b", "change")],
    )


def layout(a: str | None = None, b: str | None = None, **_query: str) -> html.Div:
    opts = _options(a, b)
    return html.Div([
        dcc.Location(id="cmp-url", refresh=False),
        html.Div(className="card", children=[
            html.H2("Compare head atlases"),
            html.P("Pick two runs with head roles (two models, or two checkpoints of one model, on any prompts).",
                   className="muted"),
            html.Div(className="row", children=[
                html.Div(className="field", style={"minWidth": "420px"}, children=[
                    html.Label("Run A"), dcc.Dropdown(id="cmp-a", options=opts, value=a)]),
                html.Div(className="field", style={"minWidth": "420px"}, children=[
                    html.Label("Run B"), dcc.Dropdown(id="cmp-b", options=opts, value=b)]),
            ]),
            html.Div(id="cmp-message"),
        ]),
        html.Div(id="cmp-body", style={"display": "none"}, children=[
            html.Div(className="card", children=[
                html.Div(id="cmp-mode", className="muted"),
                dcc.Graph(id="cmp-grids", config={"displaylogo": False}),
            ]),
            html.Div(className="card", children=[
                html.H3("Roles: appear, move, vanish"),
                _table("cmp-roles", [("role", "role"), ("status", "from A to B"), ("count_a", "heads in A"),
                                     ("count_b", "heads in B"), ("kept", "same heads"), ("gained", "new heads"),
                                     ("lost", "heads lost"), ("depth_a", "mean depth A"), ("depth_b", "mean depth B")]),
                dcc.Graph(id="cmp-depth", config={"displaylogo": False}),
            ]),
            html.Div(id="cmp-heads-card", className="card", children=[
                html.H3("Heads whose dominant role changed"),
                _table("cmp-heads", [("layer", "layer"), ("head", "head"), ("role_a", "role in A"),
                                     ("role_b", "role in B"), ("change", "change")]),
            ]),
        ]),
    ])


def _load(run_id: str) -> dict:
    try:
        return atlas_data.load(run_id)
    except state.NotReady as exc:
        raise state.ViewError(f"run {run_id[:12]} is not ready ({exc}); reload this page when it is finished") from None
    except LookupError:
        raise state.ViewError(f"no run {run_id}") from None


@callback(
    Output("cmp-body", "style"), Output("cmp-message", "children"), Output("cmp-grids", "figure"),
    Output("cmp-depth", "figure"), Output("cmp-roles", "data"), Output("cmp-heads", "data"),
    Output("cmp-mode", "children"), Output("cmp-heads-card", "style"), Output("cmp-url", "search"),
    Input("cmp-a", "value"), Input("cmp-b", "value"),
)
def render(a, b):
    search = "?" + urlencode({k: v for k, v in (("a", a), ("b", b)) if v})
    hidden = ({"display": "none"}, no_update, no_update, no_update, no_update, no_update, no_update, no_update, search)
    if not a or not b:
        return ({"display": "none"}, html.P("Choose run A and run B.", className="muted"), *hidden[2:])
    try:
        da, db = _load(a), _load(b)
    except state.ViewError as exc:
        return ({"display": "none"}, alert(str(exc)), *hidden[2:])
    except state.REDIS_ERRORS:
        return ({"display": "none"}, alert(state.REDIS_DOWN, "warn"), *hidden[2:])
    dom_a, scores_a = atlas_data.arrays(da)
    dom_b, scores_b = atlas_data.arrays(db)
    label_a, label_b = f"A: {da['label']}", f"B: {db['label']}"
    comparison = hr.compare_roles(dom_a, dom_b)
    roles = [{**r, "role": f"{hr.ROLE_GLYPHS[r['role']]} {hr.ROLE_LABELS[r['role']]}",
              "status": STATUS_TEXT[r["status"]],
              "depth_a": None if r["depth_a"] is None else round(r["depth_a"], 2),
              "depth_b": None if r["depth_b"] is None else round(r["depth_b"], 2)} for r in comparison["roles"]]
    for r in roles:
        r.pop("by_depth_a"), r.pop("by_depth_b")
    if comparison["matched"]:
        mode = (f"Same shape ({dom_a.shape[0]} layers × {dom_a.shape[1]} heads): heads matched by (layer, head); "
                f"{len(comparison['heads'])} of {dom_a.size} heads changed their dominant role (third panel: green = a role "
                "appears, red = it vanishes, orange = another role).")
    else:
        mode = (f"Different shapes ({dom_a.shape[0]}×{dom_a.shape[1]} vs {dom_b.shape[0]}×{dom_b.shape[1]}): no head "
                "matching; roles are compared by their share of heads per quarter of relative depth (a role 'moves' "
                "when its mean relative depth shifts by more than 0.125).")
    heads = [{**h, "role_a": hr.ROLE_LABELS[h["role_a"]], "role_b": hr.ROLE_LABELS[h["role_b"]]} for h in comparison["heads"]]
    return (
        {"display": "block"}, "",
        figures_atlas.compare_grids(dom_a, dom_b, scores_a, scores_b, label_a, label_b),
        figures_atlas.role_depth_bars(comparison, "A", "B"),
        roles, heads, mode, {"display": "block" if comparison["matched"] else "none"}, search,
    )
