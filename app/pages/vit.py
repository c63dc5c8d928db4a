"""ViT patch attention of an image run: CLS->patch attention over the image, all heads of a layer,
attention rollout, where a clicked patch attends, and token norms with high-norm outliers.

Definitions (rollout per Abnar & Zuidema 2020, high-norm tokens per Darcet et al. 2024) are in
``backend/vit.py``. View state (image, layer, head, fusion, discard, opacity, patch, rule) lives in the URL
query string, like the run page.
"""

from __future__ import annotations


import dash
import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from app import state, vit_data
from app.components import alert, empty_figure, field, help_text
from app.run_gate import poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import figures_vit, names, vit, vocab

dash.register_page(__name__, path_template="/runs/<run_id>/vit", title="Patch attention · Attention Atlas",
                   name="Patch attention", order=1)  # before the run page, whose /runs/<run_id> would match too
register_view("vit", "Patch attention", needs=names.resid_norm(0, 0), kinds=("image",))

ROLLOUT_HELP = (
    "Attention rollout (Abnar & Zuidema 2020): per layer fuse the heads (mean, max or min), optionally zero "
    "the lowest 'discard' fraction of attentions, add the residual 0.5*A + 0.5*I, renormalise rows, multiply "
    "across layers. Shown: the CLS row over the patches. Discard rule, default as the released code "
    "(jacobgil/vit-explain, vit_rollout.py): the lowest fraction of all entries of the fused matrix, sparing "
    "only CLS->CLS; variant 'spare CLS row and column': never drop an entry of the CLS row or column. "
    "Definitions and sources: docs/REFERENCES.md."
)
DISCARD_LABELS = {r.name: r.label for r in vocab.DISCARD_RULES}
NORM_HELP = {
    "sd": "high norm: above mean + 3 sd of the layer's patch-token norms",
    "median": "high norm: above 2 x the median of the layer's patch-token norms",
}


def _int(value, default: int | None = 0) -> int | None:
    try:
        v = int(value)
    except (TypeError, ValueError):
        return default
    return v if v >= 0 else default


def _float(value, default: float, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return min(max(v, lo), hi) if np.isfinite(v) else default


def parse_view(query: dict) -> dict:
    """View state from URL query values (bad values fall back to defaults)."""
    return {
        "image": _int(query.get("image")), "layer": _int(query.get("layer")), "head": _int(query.get("head")),
        "fusion": query.get("fusion") if query.get("fusion") in vit.FUSIONS else "mean",
        "discard": _float(query.get("discard"), 0.0, 0.0, 0.95),
        "opacity": _float(query.get("opacity"), 0.6, 0.0, 1.0),
        "patch": _int(query.get("patch"), None),
        "rule": query.get("rule") if query.get("rule") in vit.NORM_RULES else "sd",
        "discard_rule": (query.get("discard_rule") if query.get("discard_rule") in vit.DISCARD_RULES
                         else vit.DEFAULT_DISCARD_RULE),
    }


def _graph(gid: str) -> dcc.Graph:
    return dcc.Graph(id=gid, config={"displaylogo": False}, figure=empty_figure("", 260))


def layout(run_id: str | None = None, **query: str) -> html.Div:
    view = parse_view(query)
    return html.Div([
        dcc.Store(id="vit-id", data=run_id),
        dcc.Store(id="vit-info"),
        dcc.Store(id="vit-view", data=view),
        dcc.Store(id="vit-patch", data=view["patch"]),
        dcc.Location(id="vit-url", refresh=False),
        poll_interval("vit"),
        html.Div(className="card", children=[
            html.H2(f"Patch attention · run {(run_id or '')[:12]}"),
            dcc.Link("← back to the run", href=f"/runs/{run_id}", className="muted"),
            html.Div(id="vit-status"),
            html.Div(id="vit-body", style=HIDDEN, children=[  # shown once the run is ready (see setup)
                html.Div(className="row", children=[
                    field("Image", dcc.Dropdown(id="vit-image", clearable=False), "220px"),
                    field("Layer", dcc.Dropdown(id="vit-layer", clearable=False)),
                    field("Head", dcc.Dropdown(id="vit-head", clearable=False)),
                    field("Overlay opacity", dcc.Slider(id="vit-opacity", min=0, max=1, step=0.05, value=view["opacity"],
                                                         marks={0: "0", 0.5: "0.5", 1: "1"}), "220px"),
                ]),
                html.Div(id="vit-prediction", className="muted"),
                html.Div(id="vit-error"),
                html.P("CLS → patch attention of the chosen head, upsampled bilinearly over the image. "
                       "Click a patch to see where that patch attends.", className="muted"),
                html.Div(className="grid2", children=[_graph("vit-overlay"), _graph("vit-patch-fig")]),
                _graph("vit-heads"),
            ]),
        ]),
        html.Div(id="vit-more", style=HIDDEN, children=[
            html.Div(className="card", children=[
                html.H3(["Attention rollout", help_text(ROLLOUT_HELP)]),
                html.Div(className="row", children=[
                    field("Head fusion", dcc.RadioItems(id="vit-fusion", options=list(vit.FUSIONS), value=view["fusion"],
                                                         inline=True, inputStyle={"marginRight": "4px", "marginLeft": "10px"})),
                    field("Discard ratio (lowest attentions dropped)", dcc.Slider(
                        id="vit-discard", min=0, max=0.95, step=0.05, value=view["discard"],
                        marks={0: "0", 0.5: "0.5", 0.9: "0.9"}), "320px"),
                    field("Discard rule", dcc.RadioItems(
                        id="vit-discard-rule", value=view["discard_rule"],
                        options=[{"label": DISCARD_LABELS[r], "value": r} for r in vit.DISCARD_RULES])),
                ]),
                _graph("vit-rollout"),
            ]),
            html.Div(className="card", children=[
                html.H3(["Token norms", help_text(
                    "L2 norm of each token's output hidden state per layer. High-norm tokens (Darcet et al. 2024, "
                    "'Vision Transformers Need Registers') are marked; CLS and register tokens are shown but not flagged.")]),
                field("Outlier rule", dcc.RadioItems(
                    id="vit-rule", options=[{"label": NORM_HELP[k], "value": k} for k in vit.NORM_RULES],
                    value=view["rule"], inputStyle={"marginRight": "4px"}), "320px"),
                html.Div(id="vit-norm-note"),
                html.Div(className="grid2", children=[_graph("vit-norm-map"), _graph("vit-norm-bars")]),
                _graph("vit-norm-layers"),
            ]),
        ]),
    ])


HIDDEN = {"visibility": "hidden", "height": 0, "overflow": "hidden"}
SHOWN = {"visibility": "visible"}
"""Controls and figures of a run that is not ready (unknown, failed, waiting) are hidden: they cannot work.
Hidden by visibility, not display: a figure drawn under display:none keeps a 700 px width."""


@callback(
    Output("vit-info", "data"), Output("vit-poll", "disabled"), Output("vit-status", "children"),
    Output("vit-image", "options"), Output("vit-layer", "options"), Output("vit-head", "options"),
    Output("vit-image", "value"), Output("vit-layer", "value"), Output("vit-head", "value"),
    Output("vit-body", "style"), Output("vit-more", "style"),
    Input("vit-poll", "n_intervals"), State("vit-id", "data"), State("vit-view", "data"),
)
def setup(_n, run_id, view):
    """Wait for the run to finish, then fill the pickers (values from the URL, clamped)."""
    nothing = (no_update,) * 6
    gate = wait_for_run(run_id, lambda rid: vit_data.image_run(rid)[1])
    if not gate.ready:
        return (gate.data, gate.stop, gate.status, *nothing, no_update, no_update)
    m, lay = gate.manifest, gate.data
    info = m["info"]
    n_img, n_layers, n_heads = len(info["tokens"]), int(info["n_layers"]), int(info["n_heads"])
    file_names = vit_data.image_names(m)
    img_opts = [{"label": f"image {i + 1} · {file_names[i] if i < len(file_names) else '?'}", "value": i}
                for i in range(n_img)]
    clamp = lambda v, n: v if isinstance(v, int) and 0 <= v < n else 0  # noqa: E731
    data = {"n_layers": n_layers, "n_heads": n_heads, "n_images": n_img, "n_prefix": lay.n_prefix,
            "rows": lay.rows, "cols": lay.cols, "registers": list(lay.registers), "tokens": info["tokens"][0]}
    regs = f", {len(lay.registers)} register token(s)" if lay.registers else ", no register tokens"
    status = html.Div(f"{n_img} image(s) · {n_layers} layers × {n_heads} heads · {lay.rows}×{lay.cols} patches"
                      f" + CLS{regs}", className="muted")
    return (data, True, status, img_opts,
            [{"label": f"layer {l}", "value": l} for l in range(n_layers)],
            [{"label": f"head {h}", "value": h} for h in range(n_heads)],
            clamp(view.get("image"), n_img), clamp(view.get("layer"), n_layers), clamp(view.get("head"), n_heads),
            SHOWN, SHOWN)


def _layout(info: dict) -> vit.TokenLayout:
    return vit.TokenLayout(n_prefix=info["n_prefix"], rows=info["rows"], cols=info["cols"],
                           registers=tuple(info.get("registers") or ()))


def _patch_rc(patch, lay: vit.TokenLayout) -> tuple[int, int] | None:
    if isinstance(patch, int) and 0 <= patch < lay.n_patches:
        return divmod(patch, lay.cols)
    return None


def _errors(exc: Exception):
    if isinstance(exc, state.REDIS_ERRORS):
        return alert(state.REDIS_DOWN, "warn")
    return alert(str(exc), "warn")


VIEW_ERRORS = (state.ViewError, state.NotReady, LookupError, ValueError) + state.REDIS_ERRORS


@callback(
    Output("vit-overlay", "figure"), Output("vit-patch-fig", "figure"), Output("vit-heads", "figure"),
    Output("vit-error", "children"),
    Input("vit-image", "value"), Input("vit-layer", "value"), Input("vit-head", "value"),
    Input("vit-opacity", "value"), Input("vit-patch", "data"),
    State("vit-id", "data"), State("vit-info", "data"),
)
def render_heads(image, layer, head, opacity, patch, run_id, info):
    if not info or image is None or layer is None or head is None:
        return no_update, no_update, no_update, no_update
    lay = _layout(info)
    try:
        m, _ = vit_data.image_run(run_id)
        p = vit_data.check_image(m, image)
        pat = vit_data.layer_pattern(run_id, m, p, state.check_index("layer", layer, info["n_layers"]))
        h = state.check_index("head", head, info["n_heads"])
        uri, w, hgt = vit_data.display(run_id, p, lay.rows, lay.cols)
    except VIEW_ERRORS as exc:
        empty = empty_figure("not available", 260)
        return empty, empty, empty, _errors(exc)
    maps = vit.cls_patch_attention(pat, (lay.rows, lay.cols), lay.n_prefix)
    sel = _patch_rc(patch, lay)
    op = float(opacity if opacity is not None else 0.6)
    over = figures_vit.overlay(uri, w, hgt, maps[h], lay, op, title=f"layer {layer} head {h}: CLS → patch attention",
                               selected=sel)
    if sel is None:
        pfig = empty_figure("Click a patch on the image to see where it attends", 260)
    else:
        q = lay.patch_index(*sel)
        row = vit.cls_patch_attention(pat[h], (lay.rows, lay.cols), lay.n_prefix, query=q)
        prefix = ", ".join(f"{info['tokens'][i]} {pat[h, q, i]:.3f}" for i in range(lay.n_prefix))
        pfig = figures_vit.overlay(uri, w, hgt, row, lay, op, selected=sel,
                                   title=f"layer {layer} head {h}: from patch r{sel[0]} c{sel[1]} (to {prefix})")
    grid = figures_vit.head_grid(maps, title=f"layer {layer}: CLS → patch attention of every head "
                                 "(each divided by its max; click one to select it)", selected=h)
    return over, pfig, grid, ""


@callback(Output("vit-prediction", "children"), Input("vit-image", "value"), State("vit-id", "data"),
          State("vit-info", "data"))
def render_prediction(image, run_id, info):
    """The chosen image's file name and the model's predicted class (from the run's stored logits)."""
    if not info or image is None:
        return no_update
    try:
        m, _ = vit_data.image_run(run_id)
        p = vit_data.check_image(m, image)
        pred = vit_data.prediction(run_id, m, p)
        name = vit_data.image_names(m)[p]
    except VIEW_ERRORS as exc:
        return _errors(exc)
    if pred is None:
        return f"{name} · predicted class: not stored for this run (runs made before the class logits were kept)"
    label, prob = pred
    return [f"{name} · predicted class: ", html.B(label, id="vit-predicted-class"), f" (p = {prob:.2f})"]


@callback(
    Output("vit-rollout", "figure"),
    Input("vit-image", "value"), Input("vit-fusion", "value"), Input("vit-discard", "value"),
    Input("vit-opacity", "value"), Input("vit-patch", "data"), Input("vit-discard-rule", "value"),
    State("vit-id", "data"), State("vit-info", "data"),
)
def render_rollout(image, fusion, discard, opacity, patch, discard_rule, run_id, info):
    if not info or image is None:
        return no_update
    lay = _layout(info)
    try:
        grid, _, fusion, discard = vit_data.rollout(run_id, image, fusion, discard or 0.0, discard_rule)
        uri, w, hgt = vit_data.display(run_id, int(image), lay.rows, lay.cols)
    except VIEW_ERRORS as exc:
        return empty_figure(f"rollout not available: {exc}", 260)
    return figures_vit.overlay(uri, w, hgt, grid, lay, float(opacity if opacity is not None else 0.6),
                               title=f"rollout over {info['n_layers']} layers · fusion {fusion} · discard {discard:.2f}"
                                     + (f" ({DISCARD_LABELS.get(discard_rule, '')})" if discard > 0 else ""),
                               value_name="relevance", selected=_patch_rc(patch, lay))


@callback(
    Output("vit-norm-map", "figure"), Output("vit-norm-bars", "figure"), Output("vit-norm-layers", "figure"),
    Output("vit-norm-note", "children"),
    Input("vit-image", "value"), Input("vit-layer", "value"), Input("vit-rule", "value"),
    Input("vit-opacity", "value"), State("vit-id", "data"), State("vit-info", "data"),
)
def render_norms(image, layer, rule, opacity, run_id, info):
    if not info or image is None or layer is None:
        return no_update, no_update, no_update, no_update
    lay = _layout(info)
    rule = rule if rule in vit.NORM_RULES else "sd"
    try:
        m, _ = vit_data.image_run(run_id)
        p = vit_data.check_image(m, image)
        l = state.check_index("layer", layer, info["n_layers"])
        norms = vit_data.norms(run_id, m, p)
        uri, w, hgt = vit_data.display(run_id, p, lay.rows, lay.cols)
    except VIEW_ERRORS as exc:
        empty = empty_figure("not available", 260)
        return empty, empty, empty, _errors(exc)
    if norms is None:
        empty = empty_figure("no token norms stored for this run", 260)
        return empty, empty, empty, alert("This run has no token norms (it predates them); re-run it.", "warn")
    among = vit.patch_mask(lay)
    out = vit.high_norm_tokens(norms, rule, among)
    thr = vit.norm_threshold(norms[l], rule, among)
    marks = [lay.patch_at(int(i)) for i in np.flatnonzero(out[l])]
    grid = norms[l, lay.n_prefix:].reshape(lay.rows, lay.cols)
    nmap = figures_vit.overlay(uri, w, hgt, grid, lay, float(opacity if opacity is not None else 0.6),
                               title=f"layer {l}: patch token norms (high-norm patches outlined)", value_name="norm",
                               marks=[mk for mk in marks if mk is not None], colorscale="Viridis")
    bars = figures_vit.norm_bars(norms[l], info["tokens"], lay, out[l], thr, title=f"layer {l}: token norms")
    layers = figures_vit.norm_layers(norms, info["tokens"], out, title="token norms per layer (x: high norm)")
    n_out = int(out[l].sum())
    regs = f" Register tokens: {', '.join(str(i) for i in lay.registers)}." if lay.registers else ""
    note = html.P(f"{NORM_HELP[rule]}: {n_out} high-norm patch token(s) in layer {l}, "
                  f"{int(out.sum())} over all layers.{regs}", className="muted", id="vit-norm-summary")
    return nmap, bars, layers, note


@callback(
    Output("vit-patch", "data"),
    Input("vit-overlay", "clickData"), Input("vit-patch-fig", "clickData"), Input("vit-rollout", "clickData"),
    State("vit-id", "data"), State("vit-info", "data"), State("vit-image", "value"), prevent_initial_call=True,
)
def pick_patch(c1, c2, c3, run_id, info, image):
    click = {"vit-overlay": c1, "vit-patch-fig": c2, "vit-rollout": c3}.get(ctx.triggered_id)
    if not info or not click or not click.get("points") or image is None:
        return no_update
    pt = click["points"][0]
    if "x" not in pt or "y" not in pt:
        return no_update
    lay = _layout(info)
    try:
        _, w, hgt = vit_data.display(run_id, int(image), lay.rows, lay.cols)
    except VIEW_ERRORS:
        return no_update
    r, c = figures_vit.patch_from_click(float(pt["x"]), float(pt["y"]), w, hgt, lay)
    return r * lay.cols + c


@callback(Output("vit-head", "value", allow_duplicate=True), Input("vit-heads", "clickData"),
          State("vit-info", "data"), prevent_initial_call=True)
def pick_head(click, info):
    if not info or not click or not click.get("points"):
        return no_update
    h = click["points"][0].get("curveNumber")
    return h if isinstance(h, int) and 0 <= h < info["n_heads"] else no_update


def _view_query(image, layer, head, fusion, discard, opacity, patch, rule, discard_rule, info) -> dict | None:
    """The view in the URL query, so the URL re-opens the same view."""
    if not info or image is None or layer is None or head is None:
        return None
    q = {"image": image, "layer": layer, "head": head, "fusion": fusion, "discard": round(float(discard or 0), 2),
         "opacity": round(float(opacity if opacity is not None else 0.6), 2), "rule": rule,
         "discard_rule": discard_rule}
    if isinstance(patch, int):
        q["patch"] = patch
    return q


sync_url("vit-url", [("vit-image", "value"), ("vit-layer", "value"), ("vit-head", "value"), ("vit-fusion", "value"),
                     ("vit-discard", "value"), ("vit-opacity", "value"), ("vit-patch", "data"), ("vit-rule", "value"),
                     ("vit-discard-rule", "value")],
         ("vit-info", "data"), _view_query, prevent_initial_call=False)
