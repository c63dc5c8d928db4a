"""Joint query-key maps of a run (AttentionViz, Yeh et al. 2023): a matrix of all heads, a single-head map with
colourings, hover contexts and token search, and the attention of a clicked token in its prompt (text) or image.

View state in the URL: ``?view=matrix|head&method=umap&norm=1&layer=L&head=H&colour=kind&token=cat&sel=q.3.5``
(``sel``: the selected point as kind q/k, prompt, position; it stays selected across heads).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import urlencode

import dash
import numpy as np
from dash import ClientsideFunction, Input, Output, State, callback, clientside_callback, dcc, html, no_update

from app import maps_data, state, vit_data
from app.components import alert, empty_figure, field, help_text, in_layout, query_int, store
from app.run_gate import POLL_MS, Gate, extension_offer, gate_at_layout, poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import embedding_points, figures, figures_maps, figures_vit, jobs, token_text, vit
from backend.vocab import METHOD_LABELS, RAW_MAPS

dash.register_page(__name__, path_template="/runs/<run_id>/maps", title="Query-key maps · Attention Atlas",
                   name="Query-key maps", order=1)  # before the run page, whose /runs/<run_id> would match too
register_view("maps", "Query-key maps", needs="embedding.", analysis="embedding")

MAPS_HELP = (
    "AttentionViz (Yeh et al., IEEE VIS 2023): every query and key vector of one head, over all prompts, projected "
    "together to 2-D. With the normalisation, keys are translated onto the query centroid and queries/keys scaled "
    "to the same mean norm (neither changes any query's softmax), so a query lies near the keys it attends to. "
    "Vectors are scaled by sqrt(scaling) so q·k is the attention logit."
)
SEL = re.compile(r"^([qk])\.(\d+)\.(\d+)$")
GL_CONFIG = {"displaylogo": False, "plotGlPixelRatio": 1}
"""WebGL maps drawn at the screen's resolution (Plotly's default draws 2x2 pixels per pixel: 4x the fill work, which
software WebGL, without a GPU, pays on every redraw)."""
VIEW_ERRORS = (state.ViewError, state.NotReady, LookupError, ValueError) + state.REDIS_ERRORS


def parse_view(query: dict) -> dict:
    """View state from URL query values (bad values fall back to defaults)."""
    sel = SEL.match(query.get("sel") or "")
    return {
        "view": "head" if query.get("view") == "head" else "matrix",
        "method": query.get("method") if query.get("method") in maps_data.BASE_METHODS else None,
        "norm": query.get("norm", "1") != "0",
        "layer": query_int(query.get("layer")), "head": query_int(query.get("head")),
        "colour": query.get("colour") if query.get("colour") in figures_maps.COLOUR_MODES else "kind",
        "token": (query.get("token") or "")[:100],
        "sel": [int(sel.group(1) == "k"), int(sel.group(2)), int(sel.group(3))] if sel else None,
    }


def layout(run_id: str | None = None, **query: str) -> html.Div:
    v = parse_view(query)
    ready = gate_at_layout(run_id, maps_data.map_run, analysis=maps_data.gate_analysis(run_id, v["norm"]))
    run, model, pickers = _ready(ready, run_id, v) if ready else (None, None, ([], [], [], v["method"], v["layer"], v["head"]))
    method_opts, layer_opts, head_opts, method, layer, head = pickers
    show = ({"display": "block"}, {"display": "none"}) if v["view"] == "matrix" else ({"display": "none"}, {"display": "block"})
    matrix_style, head_style = show if ready else ({"display": "none"}, {"display": "none"})
    first = _first_views(run, v, method, layer, head, run_id) if ready else FirstViews()
    return html.Div([
        dcc.Store(id="maps-id", data=run_id), dcc.Store(id="maps-run", data=run), dcc.Store(id="maps-view", data=v),
        store("maps-sel", v["sel"]),
        store("maps-head-raw", first.head[0]), store("maps-hover", first.head[1]),
        store("maps-hover-key", first.head[2]),
        dcc.Store(id="maps-pick"),
        dcc.Location(id="maps-url", refresh=False),
        poll_interval("maps", ready),
        html.Div(className="card", children=[
            html.H2(["Query-key maps", help_text(MAPS_HELP)]),
            html.Div(id="maps-model", className="muted", children=model),
            dcc.Link("← back to the run", href=f"/runs/{run_id}", className="muted"),
            html.Div(id="maps-status"),
            html.Div(className="row", id="maps-controls", style={} if ready else {"display": "none"}, children=[
                field("View", dcc.RadioItems(id="maps-mode", value=v["view"], inline=True, options=[
                    {"label": "all heads", "value": "matrix"}, {"label": "one head", "value": "head"}],
                    inputStyle={"marginRight": "4px", "marginLeft": "8px"}), "210px"),
                field("Projection", dcc.Dropdown(id="maps-method", clearable=False, value=method, options=method_opts)),
                field("Normalisation", dcc.Checklist(id="maps-norm", value=["on"] if v["norm"] else [], options=[
                    {"label": "AttentionViz (translate + scale keys)", "value": "on"}],
                    inputStyle={"marginRight": "4px"}), "260px"),
                field("Layer", dcc.Dropdown(id="maps-layer", clearable=False, value=layer, options=layer_opts), "120px"),
                field("Head", dcc.Dropdown(id="maps-head", clearable=False, value=head, options=head_opts), "120px"),
            ]),
            html.Div(id="maps-error", children=first.error),
        ]),
        html.Div(id="maps-matrix-card", className="card", style=matrix_style, children=[
            html.P("Every head of the model, queries (green) and keys (pink) of a sample of the run's tokens. "
                   "Click a cell to open that head.", className="muted"),
            dcc.Loading(dcc.Graph(id="maps-matrix", config=GL_CONFIG, figure=empty_figure() if first.matrix is None else first.matrix)),
        ]),
        html.Div(id="maps-head-card", className="card", style=head_style, children=[
            html.Div(className="row", children=[
                field("Colour by", dcc.Dropdown(id="maps-colour", clearable=False, value=v["colour"], options=[
                    {"label": lab, "value": key} for key, lab in figures_maps.COLOUR_MODES.items()]), "190px"),
                field("Find a token", dcc.Input(id="maps-search", type="text", value=v["token"], debounce=True,
                                                 placeholder="e.g. the   or  /^th/", maxLength=100), "220px"),
                html.Button("Download map (CSV)", id="maps-csv-btn", className="btn secondary", n_clicks=0),
                html.Button("Clear selection", id="maps-clear", className="btn secondary", n_clicks=0),
                dcc.Download(id="maps-csv"),
            ]),
            html.Div(id="maps-search-summary", className="muted", children=first.head[3]),
            dcc.Graph(id="maps-head-fig", config=GL_CONFIG, figure=empty_figure()),
            html.Div(id="maps-token", children=first.token[0]),
            dcc.Graph(id="maps-token-fig", config={"displaylogo": False}, figure=first.token[1], style=first.token[2]),
            dcc.Interval(id="maps-token-poll", interval=POLL_MS, n_intervals=0, disabled=first.token[3]),
        ]),
    ])


@callback(
    Output("maps-run", "data"), Output("maps-poll", "disabled"), Output("maps-status", "children"),
    Output("maps-model", "children"), Output("maps-method", "options"), Output("maps-layer", "options"),
    Output("maps-head", "options"), Output("maps-method", "value"), Output("maps-layer", "value"),
    Output("maps-head", "value"), Output("maps-controls", "style"),
    Input("maps-poll", "n_intervals"), State("maps-id", "data"), State("maps-view", "data"),
)
def setup(_n, run_id, view):
    """Show progress (per head while the maps are computed) until the run is done, then fill the pickers
    (hidden until then: they cannot work without the run's maps)."""
    nothing = (no_update,) * 6
    gate = wait_for_run(run_id, maps_data.map_run, analysis=maps_data.gate_analysis(run_id, (view or {}).get("norm", True)))
    m = gate.manifest
    model = f"{(m.get('model') or {}).get('ref')} · run {run_id[:12]}" if m else gate.blank
    if not gate.ready:
        return (gate.data, gate.stop, gate.status, model, *nothing, no_update)
    data, model, pickers = _ready(gate, run_id, view)
    return (data, True, "", model, *pickers, {})


def _ready(gate: Gate, run_id: str, view: dict) -> tuple[dict, str, tuple]:
    """The run store, the model line and the pickers (options, then values) of a finished run."""
    run = gate.data
    model = f"{(gate.manifest.get('model') or {}).get('ref')} · run {run_id[:12]}"
    clamp = lambda v, n: v if isinstance(v, int) and 0 <= v < n else 0  # noqa: E731
    n_points = "" if not run.tokens else f" · {sum(len(t) for t in run.tokens)} tokens in {len(run.tokens)} inputs"
    data = {"n_layers": run.n_layers, "n_heads": run.n_heads, "methods": list(run.methods), "image": run.image}
    return (data, model + f" · {run.n_layers} layers × {run.n_heads} heads{n_points}", (
        [{"label": METHOD_LABELS[m_], "value": m_} for m_ in run.methods],
        [{"label": f"layer {l}", "value": l} for l in range(run.n_layers)],
        [{"label": f"head {h}", "value": h} for h in range(run.n_heads)],
        view.get("method") if view.get("method") in run.methods else run.methods[0],
        clamp(view.get("layer"), run.n_layers), clamp(view.get("head"), run.n_heads)))


PLACEHOLDER = "Click a point to see that token's attention in its prompt."


class FirstViews(NamedTuple):
    """What a cached run's page shows at once, built with its layout (no callback round before the figure):
    ``head``: the head-map stores and search summary (:func:`head_view`), ``token``: the token panel."""

    matrix: Any = None
    error: Any = None
    head: tuple = (None, None, None, None)
    token: tuple = (html.P(PLACEHOLDER, className="muted"), empty_figure(), {"display": "none"}, True)


def _first_views(run: dict, v: dict, method: str, layer: int, head: int, run_id: str) -> FirstViews:
    norm = ["on"] if v["norm"] else []
    token = token_view(v["sel"], layer, head, run, run_id) if v["sel"] else FirstViews().token
    if v["view"] == "matrix":
        fig, error = matrix_view(run, method, norm, layer, head, run_id)
        return FirstViews(matrix=fig, error=error, token=token)
    raw, hover, key, summary, error = (in_layout(x) for x in head_view(
        run, layer, head, method, norm, v["colour"], v["token"], v["sel"], run_id, None))
    return FirstViews(error=error, head=(raw, hover, key, summary), token=token)


@callback(Output("maps-matrix-card", "style"), Output("maps-head-card", "style"),
          Input("maps-mode", "value"), Input("maps-run", "data"), prevent_initial_call=True)  # the layout shows a ready run
def show_mode(mode, run):
    if not run:
        return {"display": "none"}, {"display": "none"}
    on, off = {"display": "block"}, {"display": "none"}
    return (on, off) if mode == "matrix" else (off, on)


def _errors(exc: Exception, run_id: str | None = None):
    """The error line; the maps without normalisation, not computed yet, are offered instead (the run is extended,
    the page reloads at the same URL and shows the progress, then the maps)."""
    if isinstance(exc, maps_data.RawMapsMissing) and run_id:
        ext = jobs.extension_status(state.cache(), run_id)
        return extension_offer(run_id, RAW_MAPS, ext)
    return alert(state.REDIS_DOWN if isinstance(exc, state.REDIS_ERRORS) else str(exc).strip("'\""), "warn")


@callback(
    Output("maps-matrix", "figure"), Output("maps-error", "children"),
    Input("maps-run", "data"), Input("maps-mode", "value"), Input("maps-method", "value"), Input("maps-norm", "value"),
    Input("maps-layer", "value"), Input("maps-head", "value"), State("maps-id", "data"), prevent_initial_call=True,
)
def render_matrix(run, mode, method, norm, layer, head, run_id):
    if not run or mode != "matrix" or method is None:
        return no_update, no_update
    return matrix_view(run, method, norm, layer, head, run_id)


def matrix_view(run: dict, method: str, norm: list | None, layer: Any, head: Any, run_id: str) -> tuple[Any, Any]:
    """The matrix figure of all heads and the error line."""
    normalised = "on" in (norm or [])
    try:
        source = maps_data.matrix_image(run_id, method, normalised)
    except VIEW_ERRORS as exc:
        return empty_figure("not available"), _errors(exc, run_id)
    sel = (layer, head) if isinstance(layer, int) and isinstance(head, int) else None
    title = f"{METHOD_LABELS.get(method, method)} maps of all heads ({'normalised' if normalised else 'raw'} query/key vectors)"
    return figures_maps.matrix(source, run["n_layers"], run["n_heads"], selected=sel, title=title), ""


@callback(
    Output("maps-mode", "value"), Output("maps-layer", "value", allow_duplicate=True),
    Output("maps-head", "value", allow_duplicate=True),
    Input("maps-matrix", "clickData"), State("maps-run", "data"), prevent_initial_call=True,
)
def open_head(click, run):
    """A click anywhere in a cell of the matrix opens that head."""
    try:
        pt = click["points"][0]
        cell = embedding_points.cell_of(pt["x"], pt["y"], run["n_layers"], run["n_heads"])
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update, no_update, no_update
    if cell is None:
        return no_update, no_update, no_update
    return "head", cell[0], cell[1]


def _search_summary(query: str, mask: np.ndarray, meta: np.ndarray) -> str:
    if not query.strip():
        return ""
    n = int(mask.sum())
    if not n:
        return f"No token matches {query!r} in this map's sample."
    nq = int((mask & (meta[:, 0] == embedding_points.QUERY)).sum())
    return (f"{query!r}: {n} points ({nq} queries, {n - nq} keys) in "
            f"{len(np.unique(meta[mask, 1]))} input(s), ringed in red.")


@callback(
    Output("maps-head-raw", "data"), Output("maps-hover", "data"), Output("maps-hover-key", "data"),
    Output("maps-search-summary", "children"), Output("maps-error", "children", allow_duplicate=True),
    Input("maps-run", "data"), Input("maps-mode", "value"), Input("maps-pick", "data"),
    Input("maps-method", "value"), Input("maps-norm", "value"), Input("maps-colour", "value"),
    Input("maps-search", "value"), Input("maps-sel", "data"), State("maps-layer", "value"), State("maps-head", "value"),
    State("maps-id", "data"), State("maps-hover-key", "data"),
    prevent_initial_call=True,  # a cached run's map is in the layout (:func:`_first_views`)
)
def render_head(run, mode, _pick, method, norm, colour, search, sel, layer, head, run_id, hover_key=None):
    """One head's map without its hover texts (points carry indices into the run's hover table, sent to the
    browser once per page; ``maps_head.fill_hover`` puts them together). A layer/head change comes here only
    through ``maps-pick``, when the browser cannot redraw the map itself (``maps_head.switch_head``); the figure's
    ``layout.meta`` says which view it shows, for that redraw."""
    if not run or mode != "head" or method is None or layer is None or head is None:
        return (no_update,) * 5
    return head_view(run, layer, head, method, norm, colour, search, sel, run_id, hover_key,
                     searched=dash.ctx.triggered_id == "maps-search")


def head_view(run: dict, layer: int, head: int, method: str, norm: list | None, colour: str | None, search: str | None,
              sel: list | None, run_id: str, hover_key: str | None, searched: bool = False) -> tuple:
    """One head's figure store, the hover table (unless the browser holds ``hover_key``), its key, the search
    summary and the error line. ``searched``: the search box changed (an invalid regex then leaves the map)."""
    normalised = "on" in (norm or [])
    try:
        xy, meta = maps_data.head(run_id, layer, head, method, normalised)
        run_info = maps_data.map_run(run_id)
        table = maps_data.point_table(run_id, run_info, meta)
        input_names = maps_data.image_names(run_id) if run.get("image") else None
    except VIEW_ERRORS as exc:
        return {"fig": empty_figure("not available")}, no_update, no_update, "", _errors(exc, run_id)
    search_error = None
    try:
        mask = embedding_points.search_mask(run_info.tokens, meta, search or "")
    except ValueError as exc:  # an invalid /regex/: the map stays as it was, the message beside the search box
        search_error = html.Span(f"{search!r} is {exc}", className="search-error", id="maps-search-error")
        if searched:
            return no_update, no_update, no_update, search_error, no_update
        mask, search = np.zeros(len(meta), dtype=bool), ""
    selected = embedding_points.find_point(meta, *sel) if sel else None
    fig = figures_maps.head_map(
        xy, meta, None, colour or "kind", positions=table.positions, token_kinds=table.token_kinds,
        token_kind_names=table.kind_names, highlight=mask, highlight_label=f"matches of {search!r}", selected=selected,
        title=f"layer {layer} head {head} · {METHOD_LABELS.get(method, method)}{'' if normalised else ' (raw)'} · {len(meta)} points",
        uirevision=f"{run_id}:{layer}:{head}:{method}:{normalised}", prompt_names=input_names,
    )
    fig.update_layout(meta={"atlas": "qk-map", "run": run_id, "layer": layer, "head": head, "method": method,
                            "normalised": normalised, "points": table.key, "n_heads": run["n_heads"]})
    hover = no_update if hover_key == table.key else {"key": table.key, "text": table.hover.tolist()}
    summary = search_error or _search_summary(search or "", mask, meta)
    return ({"fig": fig, "hover": table.key}, hover, table.key, summary, "")


# The head map in the browser (assets/maps_head.js): the server's figure gets its hover texts from the run's table
# (sent once per page); a layer/head change takes the new head's coordinates into the drawn figure, or asks the
# server (maps-pick) when it cannot.
clientside_callback(ClientsideFunction("maps_head", "fill_hover"), Output("maps-head-fig", "figure"),
                    Input("maps-head-raw", "data"), Input("maps-hover", "data"),
                    State("maps-layer", "value"), State("maps-head", "value"))
clientside_callback(ClientsideFunction("maps_head", "switch_head"), Output("maps-pick", "data"),
                    Input("maps-layer", "value"), Input("maps-head", "value"), Input("maps-mode", "value"),
                    Input("maps-run", "data"), State("maps-id", "data"), State("maps-method", "value"),
                    State("maps-norm", "value"), prevent_initial_call=True)


@callback(
    Output("maps-sel", "data"),
    Input("maps-head-fig", "clickData"), Input("maps-clear", "n_clicks"),
    State("maps-id", "data"), State("maps-layer", "value"), State("maps-head", "value"),
    State("maps-method", "value"), State("maps-norm", "value"), prevent_initial_call=True,
)
def pick_point(click, _clear, run_id, layer, head, method, norm):
    if dash.ctx.triggered_id == "maps-clear":
        return None
    try:
        pt = click["points"][0]
        return maps_data.selected_point(run_id, layer, head, method, "on" in (norm or []), pt["x"], pt["y"])
    except (TypeError, KeyError, IndexError) + VIEW_ERRORS:
        return no_update


def _token_spans(tokens: list[str], weights: np.ndarray, position: int) -> list[html.Span]:
    top = max(float(weights.max()), 1e-9)
    return [html.Span(t, className="token", title=f"position {i}: {w:.4f}",
                      style={"background": f"rgba(31, 119, 180, {0.85 * w / top:.3f})",
                             **({"outline": "2px solid #e8112d"} if i == position else {})})
            for i, (t, w) in enumerate(zip(tokens, weights.tolist()))]


@callback(
    Output("maps-token", "children"), Output("maps-token-fig", "figure"), Output("maps-token-fig", "style"),
    Output("maps-token-poll", "disabled"),
    Input("maps-sel", "data"), Input("maps-layer", "value"), Input("maps-head", "value"), Input("maps-run", "data"),
    Input("maps-token-poll", "n_intervals"),
    State("maps-id", "data"), prevent_initial_call=True,  # a cached run's selection is drawn in the layout
)
def render_token(sel, layer, head, run, _poll, run_id):
    if not sel and dash.ctx.triggered_id != "maps-sel":
        return no_update, no_update, no_update, True  # nothing selected, nothing cleared: the placeholder stays (a
        # head switch must not redraw the hidden figure: the browser's time is the map's)
    return token_view(sel, layer, head, run, run_id, polled=dash.ctx.triggered_id == "maps-token-poll")


def token_view(sel: list | None, layer: Any, head: Any, run: dict | None, run_id: str,
               polled: bool = False) -> tuple:
    """(panel, figure, figure style, poll disabled): the selected token's attention in its own prompt: a query's row
    (where it attends) or a key's column (which queries attend to it); over the image for image runs. While the
    pattern is computed on request the panel says so and the poll stays on (``polled``: its look, without waiting)."""
    hidden = {"display": "none"}
    if not run or not sel or layer is None or head is None:
        return html.P(PLACEHOLDER, className="muted"), empty_figure(), hidden, True
    kind, p, pos = sel
    try:
        tokens, pat = maps_data.pattern(run_id, p, layer, head, 0.0 if polled else maps_data.PATTERN_WAIT_S)
        if not 0 <= pos < len(tokens):
            raise state.ViewError("the selected token is outside its prompt")
    except VIEW_ERRORS as exc:
        return _errors(exc), empty_figure(), hidden, not isinstance(exc, state.PatternPending)
    weights = pat[pos] if kind == embedding_points.QUERY else pat[:, pos]
    shown = tokens if run.get("image") else token_text.labels(tokens)
    what = (f"where the query '{shown[pos]}' attends" if kind == embedding_points.QUERY
            else f"how much each query attends to the key '{shown[pos]}'")
    title = f"layer {layer} head {head}: {what} (input {p}, position {pos})"
    link = dcc.Link("Open in the token view →", id="maps-token-link",
                    href=f"/runs/{run_id}?" + urlencode({"prompt": p, "layer": layer, "head": head, "token": pos}))
    if run.get("image"):
        try:
            lay = vit.token_layout(tokens)
            uri, w, h = vit_data.display(run_id, p, lay.rows, lay.cols)
        except VIEW_ERRORS as exc:
            return _errors(exc), empty_figure(), hidden, True
        grid = weights[lay.n_prefix:].reshape(lay.rows, lay.cols)
        fig = figures_vit.overlay(uri, w, h, grid, lay, 0.6, title=title, selected=lay.patch_at(pos))
        return html.Div([html.H4(f"{embedding_points.KIND_NAMES[kind]} {tokens[pos]} of image {p}"), link]), fig, {}, True
    body = html.Div([
        html.H4(f"{embedding_points.KIND_NAMES[kind]} '{shown[pos]}' · input {p}, position {pos}"),
        html.Div(_token_spans(shown, weights, pos), className="tokens", id="maps-token-text"), link,
    ])
    return body, figures.attention_row(shown, weights, pos, title=title), {}, True


def _view_query(mode, method, norm, layer, head, colour, search, sel, run) -> dict | None:
    """The view in the URL query, so the URL re-opens the same view."""
    if not run or method is None:
        return None
    q = {"view": mode, "method": method, "norm": int("on" in (norm or [])), "layer": layer, "head": head,
         "colour": colour}
    if search:
        q["token"] = search
    if sel:
        q["sel"] = f"{'qk'[sel[0]]}.{sel[1]}.{sel[2]}"
    return q


sync_url("maps-url", [("maps-mode", "value"), ("maps-method", "value"), ("maps-norm", "value"),
                      ("maps-layer", "value"), ("maps-head", "value"), ("maps-colour", "value"),
                      ("maps-search", "value"), ("maps-sel", "data")],
         ("maps-run", "data"), _view_query)  # not on load: the URL already holds the view (or falls back to it)


@callback(Output("maps-csv", "data"), Input("maps-csv-btn", "n_clicks"), State("maps-id", "data"),
          State("maps-layer", "value"), State("maps-head", "value"), State("maps-method", "value"),
          State("maps-norm", "value"), prevent_initial_call=True)
def download_csv(_n, run_id, layer, head, method, norm):
    normalised = "on" in (norm or [])
    try:
        text = maps_data.csv_text(run_id, layer, head, method, normalised)
    except VIEW_ERRORS:
        return no_update
    suffix = "" if normalised else "_raw"
    return dict(content=text, filename=f"qk_map_{run_id[:8]}_L{layer}_H{head}_{method}{suffix}.csv")
