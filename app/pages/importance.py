"""Head importance and pruning of one run (Michel, Levy, Neubig, NeurIPS 2019).

* the layer x head importance grid, raw or normalised within each layer; click a cell to open that head
  on the run page;
* the pruning curves (loss / perplexity / accuracy against the fraction of heads removed) in importance,
  reverse and random order (random: mean with a ±1 std band over 3 seeds);
* live pruning: switch heads off in a toggle grid, pick a prompt, run the job on the worker, see the
  change in loss / perplexity / accuracy and the top predictions before vs after.

View state (scale, metric, switched-off heads ``off=0-3,2-5``, prompt) lives in the URL query string;
initial values come from the layout's query arguments and callbacks only write ``search``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import numpy as np
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app import importance_data, state
from app.components import alert, figure_kwargs, help_text, in_layout, progress_bar, query_int
from app.run_gate import Gate, gate_at_layout, poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import figures_importance as fi
from backend import jobs, vocab
from backend.prune_spec import format_off, parse_off

# order=1: see app/pages/sinks.py ('/runs/<run_id>' must not swallow '/runs/<id>/importance')
dash.register_page(__name__, path_template="/runs/<run_id>/importance", title="Head importance · Attention Atlas",
                   name="Head importance", order=1)
register_view("importance", "Head importance", needs="metrics.importance", analysis="importance")

SCALES = ("raw", "normalised")
METRICS = ("loss", "perplexity", "accuracy")
SOURCE = ("Head importance (Michel, Levy, Neubig, NeurIPS 2019, 'Are Sixteen Heads Really Better than One?'): "
          "a gate xi = 1 multiplies each head's output. Two rules: 'per token' (default, the authors' released "
          "code, classifier_eval.py / fairseq prune.py): I = sum over inputs and positions of |dL/d xi_t| / number "
          "of tokens, with xi_t the gate at position t; 'per example' (the paper's eq. 2): I = E_x |dL(x)/d xi|. "
          "Both come from the same pass; the run's option importance_rule orders the pruning. Scores may be "
          "divided by their l2 norm within each layer (the paper's normalisation). Pruning removes 10 % of the "
          "heads per step, least important first, recomputing importance after each step; random order (3 seeds) "
          "and most-important-first are shown for comparison. Definitions and sources: docs/REFERENCES.md.")
RULES = {r.name: r.label for r in vocab.IMPORTANCE_RULES}
DEFAULT_RULE = vocab.IMPORTANCE_RULES[0].name


def layout(run_id: str | None = None, **query: str) -> html.Div:
    scale = query.get("view") if query.get("view") in SCALES else "raw"
    rule = query.get("rule") if query.get("rule") in RULES else None  # None: the run's own rule
    metric = query.get("metric") if query.get("metric") in METRICS else "loss"
    off = parse_off(query.get("off"))
    prompt = query_int(query.get("prompt"))
    ready = gate_at_layout(run_id, importance_data.load_info, analysis="importance")
    info, status, notices, objective = _ready(ready) if ready else (None, None, None, None)
    shown_rule = default_rule(info, rule) if ready else (rule or DEFAULT_RULE)
    # a cached run's views are in the layout: its page needs no callback round before the figures
    if ready:
        grid_style, curves_style, live_style, prompts, picked, toggles, metrics, metric = setup(info, prompt, off, metric)
        grid_fig = render_grid(scale, info, off, shown_rule)
        curves_fig, curves_text = render_curves(metric, info)
        off_text = off_summary(off, info)
    else:
        grid_style = curves_style = live_style = {"display": "none"}
        prompts, picked, toggles, metrics = [], None, [], [{"label": fi.METRIC_LABELS[m], "value": m} for m in METRICS]
        grid_fig = curves_fig = no_update
        curves_text = off_text = None
    return html.Div([
        dcc.Store(id="imp-run-id", data=run_id),
        dcc.Store(id="imp-info", data=info),
        dcc.Store(id="imp-off", data=off),
        dcc.Store(id="imp-rule-init", data=rule),
        dcc.Store(id="imp-prompt-init", data=prompt),
        dcc.Store(id="imp-job"),
        dcc.Location(id="imp-url", refresh=False),
        dcc.Location(id="imp-go", refresh="callback-nav"),
        poll_interval("imp", ready),
        dcc.Interval(id="imp-job-poll", interval=500, n_intervals=0, disabled=True),
        html.Div(className="card", children=[
            html.H2(["Head importance and pruning ", html.Span(help_text(SOURCE), id="imp-source")]),
            html.Div(className="row", children=[
                dcc.Link("← run page", href=f"/runs/{run_id}", className="navlink", id="imp-back"),
            ]),
            html.Div(id="imp-status", children=status),
            html.P(id="imp-objective", children=objective),
            html.Div(id="imp-notices", children=notices),
        ]),
        html.Div(id="imp-grid-card", className="card", style=grid_style, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[
                    html.Label("Scores"),
                    dcc.RadioItems(id="imp-scale", value=scale, inline=True, options=[
                        {"label": " raw E|dL/dξ|", "value": "raw"},
                        {"label": " normalised per layer (l2)", "value": "normalised"}]),
                ]),
                html.Div(className="field", children=[
                    html.Label(["Importance rule ", help_text(SOURCE)]),
                    dcc.RadioItems(id="imp-rule", value=shown_rule, inline=True,
                                   options=[{"label": f" {v}", "value": k} for k, v in RULES.items()]),
                ]),
            ]),
            dcc.Graph(id="imp-grid", config={"displaylogo": False}, **figure_kwargs(grid_fig)),
            html.P("Hover a cell for its score; click a cell to open that head on the run page. Red outlines: "
                   "heads switched off below.", className="muted"),
        ]),
        html.Div(id="imp-curves-card", className="card", style=curves_style, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[
                    html.Label("Metric"),
                    dcc.Dropdown(id="imp-metric", clearable=False, value=metric, style={"minWidth": "200px"},
                                 options=metrics),
                ]),
            ]),
            html.P(id="imp-curves-text", className="muted", children=in_layout(curves_text)),
            dcc.Graph(id="imp-curves", config={"displaylogo": False}, **figure_kwargs(curves_fig)),
        ]),
        html.Div(id="imp-live-card", className="card", style=live_style, children=[
            html.H3(["Live pruning ", help_text(
                "Click heads to switch them off (gate 0 on their output), pick a prompt and run: the worker "
                "measures the metrics on the run's first inputs (the pruning-curve data) with all heads and with "
                "the switched-off heads removed, and the top-5 predictions for the chosen prompt.")]),
            html.Div(className="row", children=[
                html.Div(className="field", children=[html.Label("Prompt for the predictions"),
                                                      dcc.Dropdown(id="imp-prompt", clearable=False, options=prompts,
                                                                   value=picked, style={"minWidth": "420px"})]),
                html.Button("Run", id="imp-run", className="btn", n_clicks=0),
                html.Button("Switch all back on", id="imp-clear", className="btn secondary", n_clicks=0),
            ]),
            html.Div(id="imp-off-text", className="muted", children=off_text),
            html.Div(id="imp-toggles", children=toggles),
            html.Div(id="imp-job-status"),
            html.Div(id="imp-result"),
        ]),
    ])


@callback(
    Output("imp-info", "data"), Output("imp-poll", "disabled"), Output("imp-status", "children"),
    Output("imp-notices", "children"), Output("imp-objective", "children"),
    Input("imp-poll", "n_intervals"), State("imp-run-id", "data"),
)
def poll(_n, run_id):
    """Wait for the run to finish, then hand its info to the views."""
    gate = wait_for_run(run_id, importance_data.load_info, analysis="importance")
    if not gate.ready:
        return gate.data, gate.stop, gate.status, gate.blank, gate.blank
    info, text, notices, objective = _ready(gate)
    return info, True, text, notices, objective


def _ready(gate: Gate) -> tuple[dict, html.Span, list, list]:
    """The info store, status line, notices and objective of a finished run (in the layout or by the poll)."""
    info = gate.data
    notices = [alert(n, "warn") for n in (gate.manifest.get("info") or {}).get("notices", [])
               if "importance" in n.lower() or "pruning" in n.lower()]
    text = html.Span(f"{info['model']} · {info['n_layers']} layers x {info['n_heads']} heads · "
                     f"{len(info['prompts'])} input(s)", className="muted")
    return info, text, notices, objective_text(info["meta"])


def objective_text(meta: dict[str, Any]) -> list:
    if not meta:
        return []
    base = meta.get("baseline") or {}
    parts = [f"{k} {base[k]:.4g}" for k in ("loss", "perplexity", "accuracy") if base.get(k) is not None]
    return [html.B(f"Objective ({meta['task_label']}): "), meta["objective"], ". ",
            f"Importance over {meta['n_prompts']} input(s); pruning curves and live pruning on the first "
            f"{meta['n_curve_prompts']} (at most {meta['max_curve_prompts']}). ",
            f"Pruning order by importance {RULES.get(meta.get('importance_rule', 'per_example'), '')}. ",
            f"All heads: {', '.join(parts)}." if parts else "",
            help_text(f"Source: {meta['source']}. Loss per model type: backend/engine/losses.py.")]


@callback(
    Output("imp-grid-card", "style"), Output("imp-curves-card", "style"), Output("imp-live-card", "style"),
    Output("imp-prompt", "options"), Output("imp-prompt", "value"), Output("imp-toggles", "children"),
    Output("imp-metric", "options"), Output("imp-metric", "value"),
    Input("imp-info", "data"), State("imp-prompt-init", "data"), State("imp-off", "data"),
    State("imp-metric", "value"), prevent_initial_call=True,  # a cached run: in the layout
)
def setup(info, prompt, off, metric):
    hidden = {"display": "none"}
    if not info:
        return hidden, hidden, hidden, [], None, [], no_update, no_update
    shown = {"display": "block"}
    prompts = [{"label": p, "value": i} for i, p in enumerate(info["prompts"])]
    prompt = prompt if 0 <= (prompt or 0) < len(prompts) else 0
    has_ppl = bool(info["meta"].get("has_perplexity", True))
    metrics = [m for m in METRICS if m != "perplexity" or has_ppl]
    metric = metric if metric in metrics else "loss"
    return (shown, shown if info["curves"] else hidden, shown, prompts, prompt,
            toggle_grid(info["n_layers"], info["n_heads"], off or []),
            [{"label": fi.METRIC_LABELS[m], "value": m} for m in metrics], metric)


def toggle_grid(n_layers: int, n_heads: int, off: list[list[int]]) -> html.Div:
    """One button per head, layers down; switched-off heads are red."""
    off_set = {tuple(h) for h in off}
    cells: list = [html.Span("")] + [html.Span(f"H{h}", className="head-grid-label") for h in range(n_heads)]
    for layer in range(n_layers):
        cells.append(html.Span(f"L{layer}", className="head-grid-label"))
        for head in range(n_heads):
            cells.append(html.Button(
                f"{layer}.{head}", id={"type": "imp-toggle", "layer": layer, "head": head}, n_clicks=0,
                className="head-toggle" + (" off" if (layer, head) in off_set else ""),
                title=f"layer {layer} head {head}: click to switch off / on"))
    return html.Div(cells, className="head-grid", id="imp-head-grid",
                    style={"gridTemplateColumns": f"auto repeat({n_heads}, auto)"})


@callback(
    Output("imp-off", "data"),
    Input({"type": "imp-toggle", "layer": ALL, "head": ALL}, "n_clicks"), Input("imp-clear", "n_clicks"),
    State("imp-off", "data"), prevent_initial_call=True,
)
def toggle(clicks, _clear, off):
    trig = ctx.triggered_id
    if trig == "imp-clear":
        return []
    if not isinstance(trig, dict) or not any(c for c in clicks if c):
        return no_update
    if not ctx.triggered or not ctx.triggered[0].get("value"):
        return no_update  # (buttons appearing, not a click)
    head = [int(trig["layer"]), int(trig["head"])]
    off = [list(h) for h in (off or [])]
    off = [h for h in off if h != head] if head in off else off + [head]
    return sorted(off)


@callback(
    Output({"type": "imp-toggle", "layer": ALL, "head": ALL}, "className"), Output("imp-off-text", "children"),
    Input("imp-off", "data"), Input("imp-info", "data"), State({"type": "imp-toggle", "layer": ALL, "head": ALL}, "id"),
    prevent_initial_call=True,
)
def paint_toggles(off, info, ids):
    if not info:
        return [no_update] * len(ids), no_update
    off_set = {tuple(h) for h in off or []}
    classes = ["head-toggle" + (" off" if (i["layer"], i["head"]) in off_set else "") for i in ids]
    return classes, off_summary(off, info)


def off_summary(off: list | None, info: dict) -> str:
    """Which heads are switched off."""
    off_set = {tuple(h) for h in off or []}
    n = info["n_layers"] * info["n_heads"]
    return (f"{len(off_set)} of {n} heads switched off: " + ", ".join(f"L{l}.H{h}" for l, h in sorted(off_set))
            if off_set else f"All {n} heads on. Click heads to switch them off.")


def _view_query(scale, metric, off, prompt, rule, info) -> dict | None:
    """The view in the URL (write only: the layout reads it on load)."""
    if not info or prompt is None:
        return None
    q = {"view": scale, "metric": metric, "prompt": prompt, "rule": rule}
    if off:
        q["off"] = format_off(off)
    return q


sync_url("imp-url", [("imp-scale", "value"), ("imp-metric", "value"), ("imp-off", "data"), ("imp-prompt", "value"),
                     ("imp-rule", "value")], ("imp-info", "data"), _view_query, safe=",")


@callback(Output("imp-rule", "value"), Input("imp-info", "data"), State("imp-rule-init", "data"),
          prevent_initial_call=True)
def default_rule(info, asked):
    """The rule shown first: the URL's, else the run's own (the one that ordered its pruning curves)."""
    if not info:
        return no_update
    return asked if asked in RULES else info.get("rule", DEFAULT_RULE)


@callback(Output("imp-grid", "figure"), Input("imp-scale", "value"), Input("imp-info", "data"),
          Input("imp-off", "data"), Input("imp-rule", "value"), prevent_initial_call=True)
def render_grid(scale, info, off, rule):
    if not info or scale not in SCALES:
        return no_update
    if f"{rule}.{scale}" not in info["grids"]:
        return fi.importance_grid(np.zeros((info["n_layers"], info["n_heads"])), False,
                                  f"this run has no '{RULES.get(rule, rule)}' scores (recompute it)")
    grid = np.asarray(info["grids"][f"{rule}.{scale}"], dtype=np.float64)
    meta = info["meta"]
    what = "normalised within each layer (l2)" if scale == "normalised" else "raw"
    order = " (orders the pruning curves)" if rule == info.get("rule") else ""
    title = (f"Head importance, {RULES[rule]}{order}, {what}; {meta.get('task_label', '')} objective over "
             f"{meta.get('n_prompts', '?')} input(s)")
    return fi.importance_grid(grid, scale == "normalised", title, off=off)


@callback(Output("imp-go", "href"), Input("imp-grid", "clickData"), State("imp-run-id", "data"),
          prevent_initial_call=True)
def open_head(click, run_id):
    """Clicking a cell opens that head on the run page."""
    try:
        pt = click["points"][0]
        layer, head = int(pt["y"]), int(pt["x"])
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update
    return f"/runs/{run_id}?" + urlencode({"layer": layer, "head": head})


@callback(Output("imp-curves", "figure"), Output("imp-curves-text", "children"),
          Input("imp-metric", "value"), Input("imp-info", "data"), prevent_initial_call=True)
def render_curves(metric, info):
    if not info or not info["curves"] or metric not in METRICS:
        return no_update, no_update
    meta = info["meta"]
    base = (meta.get("curve_baseline") or {}).get(metric)
    fig = fi.pruning_curves(info["curves"], metric, f"{fi.METRIC_LABELS[metric]} while pruning heads "
                                                    f"({meta.get('n_curve_prompts', '?')} input(s))", base)
    text = ("10 % of the heads per step; 'least important first' recomputes importance after each step (Michel et "
            "al. 2019); random order: mean ± std over seeds 0, 1, 2.")
    if meta.get("label_source") == "model":
        text += " Labels are the unpruned model's own predictions, so its accuracy is 1 by construction."
    return fig, text


@callback(
    Output("imp-job", "data"), Output("imp-job-poll", "disabled"), Output("imp-job-status", "children"),
    Output("imp-result", "children"),
    Input("imp-run", "n_clicks"), State("imp-run-id", "data"), State("imp-off", "data"), State("imp-prompt", "value"),
    State("imp-info", "data"), prevent_initial_call=True,
)
def run_job(_n, run_id, off, prompt, info):
    """Submit the pruning job (a cache hit when the same heads and prompt ran before)."""
    if not info:
        return no_update, True, no_update, no_update
    off = [h for h in off or [] if h[0] < info["n_layers"] and h[1] < info["n_heads"]]  # (URLs may hold anything)
    try:
        digest, rec = jobs.submit_prune(state.cache(), state.settings(), run_id, off, prompt or 0)
    except state.REDIS_ERRORS:
        return no_update, True, alert(state.REDIS_DOWN, "warn"), no_update
    except (ValueError, LookupError, jobs.RateLimited) as exc:
        return None, True, alert(str(exc)), ""
    if rec.get("status") in ("done", "failed"):
        return digest, True, job_status(rec), result_view(rec, info)
    return digest, False, job_status(rec), ""


@callback(
    Output("imp-job-poll", "disabled", allow_duplicate=True), Output("imp-job-status", "children", allow_duplicate=True),
    Output("imp-result", "children", allow_duplicate=True),
    Input("imp-job-poll", "n_intervals"), State("imp-job", "data"), State("imp-info", "data"),
    prevent_initial_call=True,
)
def poll_job(_n, digest, info):
    if not digest:
        return True, no_update, no_update
    try:
        rec = jobs.prune_status(state.cache(), state.settings(), digest)
    except state.REDIS_ERRORS:
        return False, alert(state.REDIS_DOWN, "warn"), no_update
    if rec is None:
        return True, alert("The pruning job is no longer known; run it again."), ""
    if rec.get("status") in ("done", "failed"):
        return True, job_status(rec), result_view(rec, info)
    return False, job_status(rec), no_update


def job_status(rec: dict[str, Any]) -> html.Div:
    status = rec.get("status")
    if status == "failed":
        return alert(f"Pruning failed: {rec.get('error')}")
    if status == "done":
        n = len(rec.get("heads") or [])
        return html.Div(f"Done: {n} head(s) switched off.", className="muted", id="imp-job-done")
    return html.Div(id="imp-job-running", children=[
        html.Span(className="spinner", role="status", **{"aria-label": "running"}),
        html.Span(f"{status}: {rec.get('stage') or ''}", className="muted"),
        progress_bar(rec.get("progress") or 0.0, rec.get("stage") or status, status, bar_id="imp-job-progress"),
    ])


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _delta(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "–"
    d = b - a
    rel = f" ({d / a:+.1%})" if a else ""
    return f"{d:+.4g}{rel}"


def _pred_list(preds: list[dict], list_id: str) -> html.Ol:
    return html.Ol(id=list_id, children=[
        html.Li([html.Code(repr(p["token"])), f"  {p['prob']:.1%}"]) for p in preds])


def result_view(rec: dict[str, Any], info: dict[str, Any] | None) -> list:
    """The change in the metrics and the predictions before vs after."""
    if rec.get("status") != "done":
        return []
    before, after = rec.get("before") or {}, rec.get("after") or {}
    rows = [html.Tr([html.Th(""), html.Th("all heads"), html.Th(f"{len(rec['heads'])} head(s) off"), html.Th("change")])]
    for key in METRICS:
        if before.get(key) is None and after.get(key) is None:
            continue
        rows.append(html.Tr([html.Td(key), html.Td(_fmt(before.get(key))), html.Td(_fmt(after.get(key))),
                             html.Td(_delta(before.get(key), after.get(key)))], id=f"imp-row-{key}"))
    preds = rec.get("predictions") or {}
    out: list = [
        html.P(f"On the run's first {rec.get('n_prompts')} input(s); objective: {rec.get('objective')}.",
               className="muted"),
        html.Table(rows, className="runs", id="imp-result-table"),
    ]
    if preds.get("before"):
        label = (info or {}).get("prompts", [])
        p = preds.get("prompt", 0)
        out += [
            html.P([f"Top {len(preds['before'])} predictions ({preds.get('what')}) for prompt ",
                    html.B(label[p] if p < len(label) else str(p + 1))], className="muted"),
            html.Div(className="grid2", children=[
                html.Div([html.H4("all heads"), _pred_list(preds["before"], "imp-pred-before")]),
                html.Div([html.H4(f"{len(rec['heads'])} head(s) off"), _pred_list(preds["after"], "imp-pred-after")]),
            ]),
        ]
    elif preds.get("what"):
        out.append(html.P(f"No predictions: {preds['what']}.", className="muted"))
    return out
