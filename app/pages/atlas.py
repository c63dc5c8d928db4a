"""Head atlas of one run: every head's role as a layer x head grid, a sortable table, downloads, definitions.

View state in the URL: ``?colour=<role|score>&roles=<role,role>`` (the table's role filter).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, dash_table, dcc, html, no_update

from app import atlas_data, compare_data, state
from app.components import alert, figure_kwargs
from app.run_gate import Gate, gate_at_layout, poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import figures_atlas
from backend import roles as hr

dash.register_page(__name__, path_template="/runs/<run_id>/atlas", title="Head atlas · Attention Atlas",
                   name="Head atlas", order=1)  # before the run page, whose /runs/<run_id> would match too
register_view("atlas", "Head atlas", needs="metrics.induction", analysis="roles")

COLOUR_OPTIONS = [{"label": "dominant role", "value": "role"}] + [
    {"label": s.label, "value": s.key} for s in hr.SCORES]
ROLE_OPTIONS = [{"label": f"{hr.ROLE_GLYPHS[r]} {hr.ROLE_LABELS[r]}", "value": r} for r in hr.ROLES]


def definitions_panel() -> html.Details:
    """Every score's definition, inputs and source, and the role rules: one click (the summary) away."""
    items = []
    for s in hr.SCORES:
        items += [html.Dt([html.B(s.label), html.Code(f" {s.key}", className="muted")]),
                  html.Dd([html.Div(s.definition), html.Div(f"Inputs: {s.inputs}.", className="muted"),
                           html.Div(["Source: ", html.A(s.source, href=s.url, target="_blank", rel="noopener")])])]
    rules = [html.Li(f"{hr.ROLE_GLYPHS[r]} {hr.ROLE_LABELS[r]}: {hr.ROLE_SCORE[r]} "
                     f"{'>' if r == 'sink' else '≥'} {hr.THRESHOLDS[r]}" + (" and peak offset ≠ +1" if r == "positional" else ""))
             for r in hr.PRIORITY]
    return html.Details(id="atlas-definitions", className="card", children=[
        html.Summary("Score definitions and sources"),
        html.P(["Each definition, the released code it follows and its labelled variants: ",
                html.A("docs/REFERENCES.md", href="/docs/references", target="_blank", rel="noopener"), "."]),
        html.Dl(items),
        html.P("Dominant role: the first of these a head passes, in this order (else · no clear role); the table's "
               "'roles' column lists every role a head passes."),
        html.Ol(rules),
    ])


def _table(rows: list) -> dash_table.DataTable:
    cols = [{"name": "layer", "id": "layer", "type": "numeric"}, {"name": "head", "id": "head", "type": "numeric"},
            {"name": "dominant role", "id": "role"}, {"name": "all roles", "id": "roles"}]
    cols += [{"name": s.label, "id": s.key, "type": "numeric"} for s in hr.SCORES]
    return dash_table.DataTable(
        id="atlas-table", columns=cols, data=rows, sort_action="native", filter_action="native",
        page_action="native", page_size=24, sort_mode="multi",
        tooltip_header={s.key: f"{s.definition} ({s.source})" for s in hr.SCORES}, tooltip_delay=300,
        tooltip_duration=None, style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "Inter, system-ui, sans-serif", "fontSize": 13, "padding": "4px 8px"},
        style_header={"fontWeight": 600, "textDecoration": "underline dotted"},
        style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "left"} for c in ("role", "roles")],
    )


def layout(run_id: str | None = None, **query: str) -> html.Div:
    colour = query.get("colour") if query.get("colour") in [o["value"] for o in COLOUR_OPTIONS] else "role"
    roles = [r for r in (query.get("roles") or "").split(",") if r in hr.ROLES]
    ready = gate_at_layout(run_id, atlas_data.load, analysis="roles")
    data, model, notices = _ready(ready, run_id) if ready else (None, None, None)
    # a cached run's grid, table and options are in the layout: its page needs no callback round before the figure
    body_style, fig, rows, summary, compare_style = atlas_view(data, colour, roles)
    return html.Div([
        dcc.Store(id="atlas-run-id", data=run_id),
        dcc.Store(id="atlas-data", data=data),
        dcc.Location(id="atlas-url", refresh=False),
        poll_interval("atlas", ready),
        html.Div(className="card", children=[
            html.H2("Head atlas"),
            html.Div(id="atlas-model", className="muted", children=model),
            dcc.Link("← back to the run", href=f"/runs/{run_id}"),
            html.Div(id="atlas-status", children="" if ready else html.P("loading…", className="muted")),
            html.Div(id="atlas-notices", children=notices),
        ]),
        definitions_panel(),
        html.Div(id="atlas-body", className="card", style=body_style, children=[
            html.Div(className="row", children=[
                html.Div(className="field", style={"minWidth": "220px"}, children=[
                    html.Label("Colour by"), dcc.Dropdown(id="atlas-colour", options=COLOUR_OPTIONS, value=colour,
                                                          clearable=False)]),
                html.Div(className="field", style={"minWidth": "320px"}, children=[
                    html.Label("Table: dominant role"), dcc.Dropdown(id="atlas-roles", options=ROLE_OPTIONS,
                                                                     value=roles, multi=True, placeholder="all roles")]),
                html.Button("Download CSV", id="atlas-csv-btn", className="btn secondary", n_clicks=0),
                html.Button("Download JSON", id="atlas-json-btn", className="btn secondary", n_clicks=0),
                dcc.Download(id="atlas-csv"), dcc.Download(id="atlas-json"),
            ]),
            html.Div(id="atlas-summary", className="muted", children=summary),
            html.Div(id="atlas-retrieval", className="muted", children=retrieval_text(data) if data else ""),
            dcc.Graph(id="atlas-grid", config={"displaylogo": False}, **figure_kwargs(fig)),
            html.Div(id="atlas-head-link"),
            _table(rows),
        ]),
        html.Div(id="atlas-compare-card", className="card", style=compare_style, children=[
            html.H3("Compare with another run"),
            html.P("Another model or checkpoint: heads side by side, and which roles appear, move or vanish.",
                   className="muted"),
            html.Div(className="row", children=[
                html.Div(className="field", style={"minWidth": "420px"}, children=[
                    html.Label("Run"), dcc.Dropdown(id="atlas-compare-with", placeholder="a recent run with head roles",
                                                    options=compare_options(data, run_id))]),
                html.Div(id="atlas-compare-link"),
            ]),
        ]),
    ])


@callback(
    Output("atlas-data", "data"), Output("atlas-status", "children"), Output("atlas-poll", "disabled"),
    Output("atlas-model", "children"), Output("atlas-notices", "children"),
    Input("atlas-poll", "n_intervals"), State("atlas-run-id", "data"),
)
def load(_n, run_id):
    """Poll until the run is finished, then load its atlas once."""
    gate = wait_for_run(run_id, atlas_data.load, analysis="roles")
    if not gate.ready:
        return gate.data, gate.status, gate.stop, gate.blank, gate.blank
    data, model, notices = _ready(gate, run_id)
    return data, "", True, model, notices


def _ready(gate: Gate, run_id: str) -> tuple[dict, str, list]:
    """The atlas store, the model line and the notices of a finished run (in the layout or by the poll)."""
    data = gate.data
    model = f"{data['model']} · {data['n_layers']} layers × {data['n_heads']} heads · run {run_id[:12]}"
    notices = [alert(n, "warn") for n in data.get("notices", []) if "etrieval" in n or "roles" in n.lower()]
    return data, model, notices


def retrieval_text(data: dict[str, Any]) -> list:
    """The retrieval test of the run and the needle recall of each trial."""
    r = data.get("retrieval")
    if not r:
        return []
    trials = " · ".join(f"depth {100 * t['depth']:.0f} %: recall {t['recall']:.2f}"
                        + (" (counted)" if t["counted"] else "") for t in r.get("trials", []))
    parts: list = [html.B("Retrieval test: "), r.get("label", r.get("test", "")), ". Needle recall (ROUGE-1): ",
                   trials or "no trial", "."]
    if r.get("answer"):
        parts += [" Answer sought: ", html.Q(r["answer"]), "."]
    return parts


@callback(Output("atlas-retrieval", "children"), Input("atlas-data", "data"), prevent_initial_call=True)
def render_retrieval(data):
    return retrieval_text(data) if data else ""


@callback(
    Output("atlas-body", "style"), Output("atlas-grid", "figure"), Output("atlas-table", "data"),
    Output("atlas-summary", "children"), Output("atlas-compare-card", "style"),
    Input("atlas-data", "data"), Input("atlas-colour", "value"), Input("atlas-roles", "value"), prevent_initial_call=True,
)
def render(data, colour, roles):
    """Grid and table of the loaded atlas (the URL follows through :func:`_view_query`)."""
    return atlas_view(data, colour, roles)


def atlas_view(data: dict | None, colour: str | None, roles: list | None) -> tuple:
    """The body's style, grid figure, table rows, role summary and the compare card's style."""
    if not data:
        return {"display": "none"}, no_update, [], "", {"display": "none"}
    dominant, scores = atlas_data.arrays(data)
    colour = colour or "role"
    title = "dominant role per head" if colour == "role" else f"{hr.SCORE_BY_KEY[colour].label} per head (glyph: role)"
    fig = figures_atlas.role_grid(dominant, scores, title=title, colour_by=colour)
    rows = atlas_data.rows(data)
    if roles:
        rows = [r for r in rows if r["role"] in roles]
    counts = {r: int((dominant == hr.ROLE_CODE[r]).sum()) for r in hr.ROLES}
    summary = " · ".join(f"{hr.ROLE_GLYPHS[r]} {hr.ROLE_LABELS[r]}: {n}" for r, n in counts.items() if n)
    return {"display": "block"}, fig, rows, summary, {"display": "block"}


def _view_query(data, colour, roles, _run_id) -> dict | None:
    """The view in the URL: the colouring (role: the default, left out) and the role filter."""
    if not data:
        return None
    colour = colour or "role"
    return {k: v for k, v in (("colour", colour if colour != "role" else ""), ("roles", ",".join(roles or []))) if v}


sync_url("atlas-url", [("atlas-data", "data"), ("atlas-colour", "value"), ("atlas-roles", "value")],
         ("atlas-run-id", "data"), _view_query)  # not on load: the URL holds the view


@callback(Output("atlas-head-link", "children"), Input("atlas-grid", "clickData"), State("atlas-run-id", "data"),
          prevent_initial_call=True)
def pick_head(click, run_id):
    try:
        pt = click["points"][0]
        layer, head = int(str(pt["y"]).lstrip("L")), int(str(pt["x"]).lstrip("H"))
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update
    return dcc.Link(f"Open layer {layer} head {head} in the run view →",
                    href=f"/runs/{run_id}?" + urlencode({"layer": layer, "head": head}))


@callback(Output("atlas-csv", "data"), Input("atlas-csv-btn", "n_clicks"), State("atlas-data", "data"),
          prevent_initial_call=True)
def download_csv(_n, data):
    if not data:
        return no_update
    return dict(content=hr.rows_to_csv(atlas_data.rows(data)), filename=f"head_atlas_{data['run_id'][:8]}.csv")


@callback(Output("atlas-json", "data"), Input("atlas-json-btn", "n_clicks"), State("atlas-data", "data"),
          prevent_initial_call=True)
def download_json(_n, data):
    if not data:
        return no_update
    return dict(content=atlas_data.to_json(data), filename=f"head_atlas_{data['run_id'][:8]}.json")


@callback(Output("atlas-compare-with", "options"), Input("atlas-data", "data"), State("atlas-run-id", "data"),
          prevent_initial_call=True)
def update_compare_options(data, run_id):
    return compare_options(data, run_id)


def compare_options(data: dict | None, run_id: str | None) -> list:
    """Other recent runs with head roles."""
    if not data:
        return []
    try:
        return [o for o in compare_data.run_options("roles") if o["value"] != run_id]
    except state.REDIS_ERRORS:
        return []


@callback(Output("atlas-compare-link", "children"), Input("atlas-compare-with", "value"), State("atlas-run-id", "data"),
          prevent_initial_call=True)
def compare_link(other, run_id):
    if not other:
        return ""
    return dcc.Link("Compare head by head →", href="/atlas/compare?" + urlencode({"a": run_id, "b": other}),
                    className="btn", id="atlas-compare-go")
