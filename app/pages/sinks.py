"""Attention sinks and massive activations of one run.

* a layer x head grid of one metric (first-token mass, special-token mass, entropy, distance), the sink
  rate with its threshold and source; click a cell to open that head on the run page;
* for one prompt: the attention each position receives (Gu et al. alpha) per head of one layer or of
  all layers, and the massive activations (largest |hidden| per token and layer, Sun et al. 2024);
* the StreamingLLM experiment (running perplexity: full, window, window + sinks) when the run has it.

View state (metric, prompt, layer) lives in the URL query string; initial values come from the
layout's query arguments and the callbacks only write ``search`` (no read/write cycle).
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urlencode

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from app import sinks_data, state
from app.components import alert, help_text, in_layout, query_int
from app.run_gate import Gate, gate_at_layout, poll_interval, sync_url, wait_for_run
from backend import metrics as sink_defs
from backend import vocab
from app.view_links import register_view
from backend import names, token_text
from backend import figures_sinks as fs
from backend.vocab import GRID_METRICS, SINK_EPS

# order: Dash matches templates in registry order with fnmatch ('*' also matches '/'), and pages without an
# order sort by module name, so '/runs/<run_id>' (pages.run) would swallow '/runs/<id>/sinks' (pages.sinks)
dash.register_page(__name__, path_template="/runs/<run_id>/sinks", title="Attention sinks · Attention Atlas",
                   name="Attention sinks", order=1)
register_view("sinks", "Attention sinks", needs="metrics.sink_first", analysis="metrics")

SINK_SOURCE = (
    "Sink rate (Gu et al., ICLR 2025, 'When Attention Sink Emerges in Language Models: An Empirical View'): "
    "alpha(k) is the mean attention key k receives from the queries that see it; a head has a first-token "
    f"sink on a prompt when alpha(first) > eps ({SINK_EPS:g} in the paper; the slider sets it). Default rule, as the "
    "released evaluation (sail-sg/Attention-Sink, eval_sink_open_source.py): threshold each prompt's alpha, "
    "then average over prompts, layers and heads. Variant 'threshold of the prompt-mean alpha': average alpha "
    "over the prompts first, then count heads. Attention sinks: Xiao et al., ICLR 2024, 'Efficient Streaming "
    "Language Models with Attention Sinks'. Definitions and sources: docs/REFERENCES.md."
)
RULE_LABELS = {r.name: r.label for r in vocab.SINK_RULES}
MASSIVE_SOURCE = (
    "Massive activations (Sun et al., 2024): a few hidden-state entries of magnitude ~100+ and up to "
    "~10,000x the median, at fixed feature dimensions and on a few tokens. Colour: the largest |activation| "
    "of each token after each block; hover: the feature dimension where it occurs. Row labels: the layer's "
    "largest |activation| divided by the median |activation| of the prompt's layer (mean over prompts)."
)
STREAMING_SOURCE = (
    "StreamingLLM (Xiao et al., ICLR 2024) on the run's first prompt: per-token NLL with full causal "
    "attention, with a window of the last W keys, and with the window plus the first k tokens (attention "
    "sinks); the curves are the running perplexity exp(mean NLL so far)."
)


EMPTY = {"data": [], "layout": {}}


def _layer_value(value: Any) -> int | str:
    return "all" if value == "all" else query_int(value)


def layout(run_id: str | None = None, **query: str) -> html.Div:
    metric = query.get("metric") if query.get("metric") in GRID_METRICS else GRID_METRICS[0]
    view = {"metric": metric, "prompt": query_int(query.get("prompt")), "layer": _layer_value(query.get("layer"))}
    try:
        eps = sink_defs.check_sink_eps(query.get("eps", sink_defs.SINK_EPS))
    except ValueError:
        eps = sink_defs.SINK_EPS
    rule = query.get("rule") if query.get("rule") in sink_defs.SINK_RULES else sink_defs.DEFAULT_SINK_RULE
    ready = gate_at_layout(run_id, sinks_data.load_info, analysis=sinks_data.gate_analysis(run_id) if run_id else "metrics")
    info, status, notices = _ready(ready) if ready else (None, None, None)
    # a cached run's views are in the layout: its page needs no callback round before the figures
    grid_style, prompt_style, stream_style, prompts, prompt, layers, layer = setup_view(info, view)
    grid_fig, rate, metric_help = grid_view(metric, info, eps, rule, run_id)
    rec_fig, mas_fig, prompt_error = prompt_view(prompt, layer, run_id, info)
    stream_fig, stream_text = streaming_view(info, run_id)
    return html.Div([
        dcc.Store(id="sinks-run-id", data=run_id),
        dcc.Store(id="sinks-info", data=info),
        dcc.Store(id="sinks-view", data=view),
        dcc.Location(id="sinks-url", refresh=False),
        dcc.Location(id="sinks-go", refresh="callback-nav"),
        poll_interval("sinks", ready),
        html.Div(className="card", children=[
            html.H2(["Attention sinks ", help_text(SINK_SOURCE)]),
            html.Div(className="row", children=[
                dcc.Link("← run page", href=f"/runs/{run_id}", className="navlink", id="sinks-back"),
                dcc.Link("compare with another run", href=f"/compare?a={run_id}", className="navlink"),
            ]),
            html.Div(id="sinks-status", children=status),
            html.Div(id="sinks-notices", children=notices),
        ]),
        html.Div(id="sinks-grid-card", className="card", style=grid_style, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[
                    html.Label(["Metric ", html.Span(id="sinks-metric-help", children=in_layout(metric_help, None))]),
                    dcc.Dropdown(id="sinks-metric", clearable=False, value=metric, style={"minWidth": "300px"},
                                 options=[{"label": fs.METRICS[m]["label"], "value": m} for m in GRID_METRICS]),
                ]),
                html.Button("Download grid (CSV)", id="sinks-csv-btn", className="btn secondary", n_clicks=0),
                html.Button("Download grid (JSON)", id="sinks-json-btn", className="btn secondary", n_clicks=0),
                dcc.Download(id="sinks-download"),
            ]),
            html.Div(className="row", children=[
                html.Div(className="field", style={"minWidth": "320px"}, children=[
                    html.Label(["Sink threshold eps ", help_text("A head has a first-token sink on a prompt when "
                                                                  f"alpha(first) > eps; Gu et al. use {SINK_EPS:g}.")]),
                    dcc.Slider(id="sinks-eps", min=0.0, max=1.0, step=0.01, value=eps,
                               marks={v / 10: f"{v / 10:g}" for v in range(0, 11, 2)},
                               tooltip={"placement": "bottom", "always_visible": False}),  # the box beside it shows the value
                ]),
                html.Div(className="field", children=[
                    html.Label(["Sink-rate rule ", help_text(SINK_SOURCE)]),
                    dcc.RadioItems(id="sinks-rule", value=rule,
                                   options=[{"label": RULE_LABELS[r], "value": r} for r in sink_defs.SINK_RULES]),
                ]),
            ]),
            html.P(id="sinks-rate", className="sink-rate", children=in_layout(rate, None)),
            dcc.Graph(id="sinks-grid", config={"displaylogo": False}, figure=in_layout(grid_fig, EMPTY)),
            html.P("Hover a cell for its value; click a cell to open that head on the run page. "
                   "Red outlines: heads whose prompt-mean alpha(first) > eps.", className="muted"),
        ]),
        html.Div(id="sinks-prompt-card", className="card", style=prompt_style, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[html.Label("Prompt"), dcc.Dropdown(
                    id="sinks-prompt", clearable=False, options=prompts, value=prompt)]),
                html.Div(className="field", children=[html.Label("Layer"), dcc.Dropdown(
                    id="sinks-layer", clearable=False, options=layers, value=layer)]),
            ]),
            html.Div(id="sinks-prompt-error", children=in_layout(prompt_error, None)),
            dcc.Graph(id="sinks-received", config={"displaylogo": False}, figure=in_layout(rec_fig, EMPTY)),
            html.P(["Massive activations ", help_text(MASSIVE_SOURCE)], className="muted"),
            dcc.Graph(id="sinks-massive", config={"displaylogo": False}, figure=in_layout(mas_fig, EMPTY)),
        ]),
        html.Div(id="sinks-streaming-card", className="card", style=stream_style, children=[
            html.H3(["StreamingLLM experiment ", help_text(STREAMING_SOURCE)]),
            html.Div(id="sinks-streaming-text", className="muted", children=in_layout(stream_text, None)),
            dcc.Graph(id="sinks-streaming", config={"displaylogo": False}, figure=in_layout(stream_fig, EMPTY)),
        ]),
    ])


@callback(
    Output("sinks-info", "data"), Output("sinks-poll", "disabled"), Output("sinks-status", "children"),
    Output("sinks-notices", "children"),
    Input("sinks-poll", "n_intervals"), State("sinks-run-id", "data"),
)
def poll(_n, run_id):
    """Wait for the run to finish, then hand its info to the views."""
    gate = wait_for_run(run_id, sinks_data.load_info, analysis=sinks_data.gate_analysis(run_id))
    if not gate.ready:
        return gate.data, gate.stop, gate.status, gate.blank
    info, text, notices = _ready(gate)
    return info, True, text, notices


def _ready(gate: Gate) -> tuple[dict, html.Span, list]:
    """The info store, the status line and the run's notices of a finished run (in the layout or by the poll)."""
    info = gate.data
    notices = [alert(n, "warn") for n in (gate.manifest.get("info") or {}).get("notices", [])]
    text = html.Span(f"{info['model']} · {info['n_layers']} layers x {info['n_heads']} heads · "
                     f"{len(info['tokens'])} prompt(s)", className="muted")
    return info, text, notices


@callback(
    Output("sinks-grid-card", "style"), Output("sinks-prompt-card", "style"), Output("sinks-streaming-card", "style"),
    Output("sinks-prompt", "options"), Output("sinks-prompt", "value"),
    Output("sinks-layer", "options"), Output("sinks-layer", "value"),
    Input("sinks-info", "data"), State("sinks-view", "data"), prevent_initial_call=True,  # a cached run: in the layout
)
def setup(info, view):
    return setup_view(info, view)


def setup_view(info: dict | None, view: dict) -> tuple:
    """The cards' styles and the prompt and layer pickers (options, value)."""
    hidden = {"display": "none"}
    if not info:
        return hidden, hidden, hidden, [], None, [], None
    toks = info["tokens"]
    prompts = [{"label": f"{i + 1}: {token_text.preview(t)}", "value": i}
               for i, t in enumerate(toks)]
    layers = [{"label": "all layers x heads", "value": "all"}] + [
        {"label": f"layer {l}", "value": l} for l in range(info["n_layers"])]
    prompt = view["prompt"] if 0 <= view["prompt"] < len(toks) else 0
    layer = view["layer"] if view["layer"] == "all" or 0 <= view["layer"] < info["n_layers"] else 0
    shown = {"display": "block"}
    has = lambda prefix: any(s.startswith(prefix) for s in info["sizes"])  # noqa: E731
    # the per-prompt card draws arrays of the metrics analysis (attention received, massive activations)
    return (shown if info["metrics"] else hidden, shown if has("prompt.") and info["metrics"] else hidden,
            shown if has("streaming.nll_full") else hidden, prompts, prompt, layers, layer)


def _view_query(metric, prompt, layer, eps, rule, info) -> dict | None:
    """The view in the URL (write only: the layout reads it on load)."""
    if not info or metric is None or prompt is None or layer is None:
        return None
    return {"metric": metric, "prompt": prompt, "layer": layer, "eps": f"{float(eps):g}", "rule": rule}


sync_url("sinks-url", [("sinks-metric", "value"), ("sinks-prompt", "value"), ("sinks-layer", "value"),
                       ("sinks-eps", "value"), ("sinks-rule", "value")], ("sinks-info", "data"), _view_query)


def sink_rate_text(run_id: str, eps: float, rule: str) -> list:
    """The sink rate at ``eps`` by ``rule``, with what it counts (from the stored per-prompt alpha)."""
    try:
        s = sinks_data.sink_summary(run_id, eps, rule)
    except (state.ViewError, state.NotReady, LookupError) as exc:
        return [str(exc)]
    if s["share"] is None:
        what = "stored rate of an older run"
    elif rule == "per_prompt":
        what = f"share of (prompt, layer, head) triples over {s['n_prompts']} prompt(s) with alpha(first) > eps"
    else:
        what = f"share of heads whose alpha(first), averaged over {s['n_prompts']} prompt(s), is > eps"
    return [html.B(f"Sink rate {s['sink_rate']:.4f}"), f" at eps = {s['eps']:g}, rule: {RULE_LABELS[rule]}: {what}. ",
            help_text(SINK_SOURCE)]


@callback(Output("sinks-grid", "figure"), Output("sinks-rate", "children"), Output("sinks-metric-help", "children"),
          Input("sinks-metric", "value"), Input("sinks-info", "data"), Input("sinks-eps", "value"),
          Input("sinks-rule", "value"), State("sinks-run-id", "data"), prevent_initial_call=True)
def render_grid(metric, info, eps, rule, run_id):
    return grid_view(metric, info, eps, rule, run_id)


def grid_view(metric: str, info: dict | None, eps: Any, rule: str, run_id: str) -> tuple:
    """The grid figure, the sink-rate line and the metric's help."""
    if not info or not info["metrics"] or metric not in GRID_METRICS:
        return no_update, no_update, no_update
    try:
        eps = sink_defs.check_sink_eps(eps)
    except ValueError:
        eps = sink_defs.SINK_EPS
    rule = rule if rule in sink_defs.SINK_RULES else sink_defs.DEFAULT_SINK_RULE
    values = info["metrics"].get(metric)
    if values is None:
        return fs.head_grid(np.zeros((1, 1)), metric, "not in this run"), "", ""
    grid = np.asarray(values, dtype=np.float64)
    title = f"{fs.METRICS[metric]['label']} per layer x head (mean over {len(info['tokens'])} prompt(s))"
    try:
        text = sink_rate_text(run_id, eps, rule)
    except state.REDIS_ERRORS:
        text = [state.REDIS_DOWN]
    return fs.head_grid(grid, metric, title, eps=eps), text, help_text(fs.METRICS[metric]["help"])


@callback(Output("sinks-go", "href"), Input("sinks-grid", "clickData"), State("sinks-run-id", "data"),
          State("sinks-prompt", "value"), prevent_initial_call=True)
def open_head(click, run_id, prompt):
    """Clicking a cell opens that head on the run page."""
    try:
        pt = click["points"][0]
        layer, head = int(pt["y"]), int(pt["x"])
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update
    return f"/runs/{run_id}?" + urlencode({"prompt": prompt or 0, "layer": layer, "head": head})


@callback(Output("sinks-received", "figure"), Output("sinks-massive", "figure"), Output("sinks-prompt-error", "children"),
          Input("sinks-prompt", "value"), Input("sinks-layer", "value"), State("sinks-run-id", "data"),
          State("sinks-info", "data"), prevent_initial_call=True)
def render_prompt(prompt, layer, run_id, info):
    return prompt_view(prompt, layer, run_id, info)


def prompt_view(prompt: Any, layer: Any, run_id: str, info: dict | None) -> tuple:
    """The attention-received and massive-activation figures of one prompt, and its errors."""
    if not info or prompt is None or layer is None:
        return no_update, no_update, no_update
    errors, rec_fig, mas_fig = [], no_update, no_update
    try:
        state.check_index("prompt", prompt, len(info["tokens"]))
        if layer != "all":
            state.check_index("layer", layer, info["n_layers"])
        tokens, rec, rows = sinks_data.received_rows(run_id, prompt, layer, info["n_layers"])
        where = "all layers x heads" if layer == "all" else f"layer {layer}"
        rec_fig = fs.received_heatmap(token_text.labels(tokens), rec, rows, f"prompt {prompt + 1}, {where}: attention received per position "
                                                         "(mean over the queries that see it)")
    except (state.ViewError, state.NotReady, LookupError) as exc:
        errors.append(alert(str(exc), "warn"))
    except state.REDIS_ERRORS:
        return no_update, no_update, alert(state.REDIS_DOWN, "warn")
    try:
        if names.resid_absmax(prompt, 0) in info["sizes"]:
            top, dims = sinks_data.massive_arrays(run_id, prompt, info["n_layers"])
            ratio = info["metrics"].get("massive_ratio")
            mas_fig = fs.massive_heatmap(token_text.labels(info["tokens"][prompt]), top, dims, np.asarray(ratio, dtype=np.float64)
                                         if ratio is not None else None,
                                         f"prompt {prompt + 1}: largest |activation| per token after each block")
    except (state.ViewError, state.NotReady, LookupError) as exc:
        errors.append(alert(str(exc), "warn"))
    except state.REDIS_ERRORS:
        return no_update, no_update, alert(state.REDIS_DOWN, "warn")
    return rec_fig, mas_fig, errors


@callback(Output("sinks-streaming", "figure"), Output("sinks-streaming-text", "children"),
          Input("sinks-info", "data"), State("sinks-run-id", "data"), prevent_initial_call=True)
def render_streaming(info, run_id):
    return streaming_view(info, run_id)


def streaming_view(info: dict | None, run_id: str) -> tuple:
    """The StreamingLLM curves and their text."""
    if not info or names.streaming("nll_full") not in info["sizes"]:
        return no_update, no_update
    try:
        arr, reassigned = sinks_data.streaming_arrays(run_id, info["sizes"])
    except (state.ViewError, state.NotReady, LookupError) as exc:
        return no_update, alert(str(exc), "warn")
    except state.REDIS_ERRORS:
        return no_update, alert(state.REDIS_DOWN, "warn")
    window, sinks = (int(x) for x in arr["params"])
    ppl = fs.streaming_perplexity(arr["nll_full"], arr["nll_window"], arr["nll_sink"], window, sinks)
    n_tok = len(arr["nll_full"]) + 1
    head = (f"First prompt, {n_tok} tokens; window W = {window}, sinks k = {sinks}; "
            f"{'sink positions re-assigned within the cache (as in the paper)' if reassigned else 'original positions'}. ")
    if ppl["n"]:
        text = head + (f"Perplexity over the {ppl['n']} tokens predicted after the cache first evicted (from token "
                       f"{ppl['first']}): full {ppl['full']:.2f}, window {ppl['window']:.2f}, "
                       f"window + sinks {ppl['sink']:.2f}.")
    else:
        text = head + (f"The text fits in the cache (W + k = {window + sinks} tokens): nothing was evicted, so the "
                       "three settings agree; use a longer text.")
    fig = fs.streaming_curves(arr["nll_full"], arr["nll_window"], arr["nll_sink"], window, sinks, reassigned)
    return fig, text


def grid_csv(values: np.ndarray) -> str:
    """``[layer, head]`` -> CSV with a header row ``layer,head_0,...``."""
    buf = io.StringIO()
    buf.write("layer," + ",".join(f"head_{h}" for h in range(values.shape[1])) + "\n")
    for l, row in enumerate(values):
        buf.write(f"{l}," + ",".join("" if not np.isfinite(v) else f"{v:.6g}" for v in row) + "\n")
    return buf.getvalue()


@callback(Output("sinks-download", "data"), Input("sinks-csv-btn", "n_clicks"), Input("sinks-json-btn", "n_clicks"),
          State("sinks-metric", "value"), State("sinks-info", "data"), State("sinks-run-id", "data"),
          State("sinks-eps", "value"), State("sinks-rule", "value"), prevent_initial_call=True)
def download(_csv, _json, metric, info, run_id, eps, rule):
    if not info or metric not in (info.get("metrics") or {}):
        return no_update
    grid = np.asarray(info["metrics"][metric], dtype=np.float64)
    stem = f"{metric}_{run_id[:8]}"
    if dash.ctx.triggered_id == "sinks-csv-btn":
        return dict(content=grid_csv(grid), filename=f"{stem}.csv")
    try:
        sink = sinks_data.sink_summary(run_id, eps, rule)
    except (state.ViewError, state.NotReady, LookupError):
        sink = {"eps": SINK_EPS, "rule": None, "sink_rate": info["metrics"].get("sink_rate")}
    body = {"run_id": run_id, "model": info.get("model"), "metric": metric, "n_layers": info["n_layers"],
            "n_heads": info["n_heads"], "eps": sink["eps"], "sink_rule": sink["rule"], "sink_rate": sink["sink_rate"],
            "values": [[None if not np.isfinite(v) else float(v) for v in row] for row in grid]}
    return dict(content=json.dumps(body), filename=f"{stem}.json")
