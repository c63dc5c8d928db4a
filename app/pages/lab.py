"""The intervention lab of one text run, and the counterfactual pair view.

* choose heads (``all`` or ``0-3,2-5``) and an intervention: scale the attention to chosen key positions
  (the first token by default) by a factor and renormalise, mask them, replace the heads' outputs by
  their mean over the run's inputs, or patch activations from a clean input into a corrupted one (logit
  difference of two answer tokens); the job runs on the worker (cached by its content hash);
* the change in loss, in the top-5 predictions and in the attention pattern itself (before / after /
  difference, any layer and head), or the patching grids;
* the same head on two of the run's prompts side by side with their difference.

The request lives in the URL (``mode``, ``prompt``, ``heads``, ``keys``, ``factor``; for patching ``clean``,
``corrupted``, ``good``, ``bad``), with the view (``layer``, ``head``, pair ``pa``, ``pb``): opening a link
with ``mode`` in it runs (or fetches from the cache) the same job.
"""

from __future__ import annotations

from typing import Any
import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from app import lab_data, state
from app.components import alert, empty_figure, field, help_text, progress_bar, query_int
from app.run_gate import poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import figures_lab as fl
from backend import jobs, token_text
from backend.lab_spec import OP_LABELS, from_query, to_query
from backend.prune_spec import format_off, parse_off
from backend.spec import SpecError

dash.register_page(__name__, path_template="/runs/<run_id>/lab", title="Intervention lab · Attention Atlas",
                   name="Intervention lab", order=1)
register_view("lab", "Intervention lab", needs="prompt.0.input_ids")

MODES = ("scale", "mask", "mean", "patch")
REQUEST_KEYS = ("mode", "prompt", "heads", "keys", "factor", "clean", "corrupted", "good", "bad")
SOURCE = ("Scaling the attention to the first token and renormalising changes a head's behaviour and the model's "
          "accuracy (ZeroTuning); masking a key = recomputing the softmax without it. Mean ablation replaces a head's "
          "output by its mean over the run's inputs (all tokens). Activation patching (as TransformerLens users do): "
          "run the corrupted input with one activation taken from the clean run, the residual stream entering a "
          "block at one position or one head's output at every position; score = (LD - LD_corrupted) / "
          "(LD_clean - LD_corrupted), LD = logit(correct answer) - logit(wrong answer) at the last position.")


def layout(run_id: str | None = None, **query: str) -> html.Div:
    spec = from_query(query)
    mode = query.get("mode") if query.get("mode") in MODES else "scale"
    heads = spec.get("heads", "all")
    view = {"layer": query_int(query.get("layer")), "head": query_int(query.get("head")),
            "pa": query_int(query.get("pa")), "pb": query_int(query.get("pb"), 1)}
    return html.Div([
        dcc.Store(id="lab-run-id", data=run_id),
        dcc.Store(id="lab-info"),
        dcc.Store(id="lab-init", data={"view": view, "prompt": spec.get("prompt", 0), "clean": spec.get("clean", 0),
                                       "corrupted": spec.get("corrupted", 1), "auto": "mode" in query}),
        dcc.Store(id="lab-job"),
        dcc.Store(id="lab-rec"),
        dcc.Store(id="lab-go"),
        dcc.Location(id="lab-url", refresh=False),
        dcc.Store(id="lab-req", data={k: query[k] for k in REQUEST_KEYS if k in query} if "mode" in query else None),
        poll_interval("lab"),
        dcc.Interval(id="lab-job-poll", interval=500, n_intervals=0, disabled=True),
        dcc.Interval(id="lab-pair-poll", interval=600, n_intervals=0, disabled=True),  # patterns computed on request
        html.Div(className="card", children=[
            html.H2(["Intervention lab ", html.Span(help_text(SOURCE), id="lab-source")]),
            html.Div(className="row", children=[
                dcc.Link("← run page", href=f"/runs/{run_id}", className="navlink"),
                dcc.Link("extreme tokens", href=f"/runs/{run_id}/extremes", className="navlink"),
            ]),
            html.Div(id="lab-status"),
        ]),
        html.Div(id="lab-card", className="card", style={"display": "none"}, children=[
            html.Div(className="row", children=[
                field("Intervention", dcc.RadioItems(id="lab-mode", value=mode, inline=True, options=[
                    {"label": f" {OP_LABELS[m]}", "value": m} for m in MODES]), width="520px"),
            ]),
            html.Div(id="lab-int-fields", className="row", children=[
                field("Prompt", dcc.Dropdown(id="lab-prompt", clearable=False), width="360px"),
                field(["Heads ", help_text('"all", or layer-head pairs: 0-3,2-5')],
                      dcc.Input(id="lab-heads", value="all" if heads == "all" else format_off(heads), debounce=True)),
                field(["Key positions ", help_text("token positions whose attention is scaled or masked; 0 = first token")],
                      dcc.Input(id="lab-keys", value=",".join(str(k) for k in spec.get("keys", [0])), debounce=True)),
                field("Factor", dcc.Input(id="lab-factor", type="number", min=0, step="any",
                                          value=spec.get("factor", 0.5), debounce=True), width="100px"),
            ]),
            html.Div(id="lab-patch-fields", className="row", children=[
                field("Clean input", dcc.Dropdown(id="lab-clean", clearable=False), width="320px"),
                field("Corrupted input", dcc.Dropdown(id="lab-corrupted", clearable=False), width="320px"),
                field("Correct answer", dcc.Input(id="lab-good", value=query.get("good", ""), debounce=True)),
                field("Wrong answer", dcc.Input(id="lab-bad", value=query.get("bad", ""), debounce=True)),
            ]),
            html.Div(className="row", children=[html.Button("Run", id="lab-run", className="btn", n_clicks=0)]),
            html.Div(id="lab-job-status"),
            html.Div(id="lab-result"),
            html.Div(id="lab-att-card", style={"display": "none"}, children=[
                html.Div(className="row", children=[
                    field("Layer", dcc.Dropdown(id="lab-layer", clearable=False)),
                    field("Head", dcc.Dropdown(id="lab-head", clearable=False)),
                ]),
                html.Div(id="lab-att-error"),
                dcc.Graph(id="lab-att", config={"displaylogo": False}),
                dcc.Graph(id="lab-change", config={"displaylogo": False}),
            ]),
        ]),
        html.Div(id="lab-pair-card", className="card", style={"display": "none"}, children=[
            html.H3(["Counterfactual pair ", help_text(
                "The same head (layer and head chosen above) on two of the run's prompts, side by side, and B - A "
                "over their common first tokens.")]),
            html.Div(className="row", children=[
                field("Prompt A", dcc.Dropdown(id="lab-pa", clearable=False), width="360px"),
                field("Prompt B", dcc.Dropdown(id="lab-pb", clearable=False), width="360px"),
            ]),
            html.Div(id="lab-pair-error"),
            dcc.Graph(id="lab-pair", config={"displaylogo": False}),
        ]),
    ])


@callback(Output("lab-info", "data"), Output("lab-poll", "disabled"), Output("lab-status", "children"),
          Input("lab-poll", "n_intervals"), State("lab-run-id", "data"))
def poll(_n, run_id):
    """Wait for the run to finish, then hand its shape and prompts to the views."""
    gate = wait_for_run(run_id, lab_data.load_info)
    if not gate.ready:
        return gate.data, gate.stop, gate.status
    data = gate.data
    return data, True, html.Span(f"{data['model']} · {data['n_layers']} layers x {data['n_heads']} heads · "
                                 f"{len(data['prompts'])} input(s)", className="muted")


@callback(
    Output("lab-card", "style"), Output("lab-pair-card", "style"),
    Output("lab-prompt", "options"), Output("lab-prompt", "value"),
    Output("lab-clean", "options"), Output("lab-clean", "value"),
    Output("lab-corrupted", "options"), Output("lab-corrupted", "value"),
    Output("lab-pa", "options"), Output("lab-pa", "value"), Output("lab-pb", "options"), Output("lab-pb", "value"),
    Output("lab-layer", "options"), Output("lab-layer", "value"), Output("lab-head", "options"),
    Output("lab-head", "value"), Output("lab-go", "data"),
    Input("lab-info", "data"), State("lab-init", "data"),
)
def setup(info, init):
    if not info:
        return ({"display": "none"},) * 2 + (no_update,) * 15
    n = len(info["prompts"])
    opts = [{"label": p, "value": i} for i, p in enumerate(info["prompts"])]
    clip = lambda v, hi, d=0: v if isinstance(v, int) and 0 <= v < hi else d  # noqa: E731
    view = init["view"]
    return ({"display": "block"}, {"display": "block"}, opts, clip(init["prompt"], n), opts, clip(init["clean"], n),
            opts, clip(init["corrupted"], n, min(1, n - 1)), opts, clip(view["pa"], n), opts,
            clip(view["pb"], n, min(1, n - 1)),
            [{"label": f"layer {l}", "value": l} for l in range(info["n_layers"])], clip(view["layer"], info["n_layers"]),
            [{"label": f"head {h}", "value": h} for h in range(info["n_heads"])], clip(view["head"], info["n_heads"]),
            1 if init.get("auto") else no_update)


@callback(Output("lab-int-fields", "style"), Output("lab-patch-fields", "style"), Output("lab-factor", "disabled"),
          Output("lab-keys", "disabled"), Input("lab-mode", "value"))
def show_fields(mode):
    patch = mode == "patch"
    return ({"display": "none"} if patch else {}, {} if patch else {"display": "none"}, mode != "scale", mode == "mean")


def build_spec(mode, prompt, heads, keys, factor, clean, corrupted, good, bad) -> dict[str, Any]:
    """The request the controls describe (validated by the job API)."""
    if mode == "patch":
        return {"kind": "patch", "clean": clean, "corrupted": corrupted, "answers": [good or "", bad or ""]}
    text = (heads or "all").strip()
    spec: dict[str, Any] = {"kind": "intervene", "op": mode, "prompt": prompt,
                            "heads": "all" if text == "all" else parse_off(text)}
    if text != "all" and not spec["heads"]:
        raise SpecError('heads: write "all" or layer-head pairs such as 0-3,2-5')
    if mode != "mean":
        try:
            spec["keys"] = [int(k) for k in str(keys or "0").split(",") if k.strip()]
        except ValueError:
            raise SpecError("key positions: integers separated by commas, e.g. 0 or 0,1") from None
    if mode == "scale":
        spec["factor"] = factor
    return spec


CONTROLS = [State("lab-mode", "value"), State("lab-prompt", "value"), State("lab-heads", "value"),
            State("lab-keys", "value"), State("lab-factor", "value"), State("lab-clean", "value"),
            State("lab-corrupted", "value"), State("lab-good", "value"), State("lab-bad", "value")]


@callback(
    Output("lab-job", "data"), Output("lab-job-poll", "disabled"), Output("lab-job-status", "children"),
    Output("lab-rec", "data"), Output("lab-req", "data"),
    Input("lab-run", "n_clicks"), Input("lab-go", "data"), State("lab-run-id", "data"), State("lab-info", "data"),
    *CONTROLS, prevent_initial_call=True,
)
def run_job(_n, _go, run_id, info, *controls):
    """Submit the job (a cache hit when the same request ran before) and put the request in the URL."""
    if not info:
        return no_update, True, no_update, no_update, no_update
    try:
        spec = build_spec(*controls)
        digest, rec = lab_data.submit(run_id, spec)
    except state.REDIS_ERRORS:
        return no_update, True, alert(state.REDIS_DOWN, "warn"), no_update, no_update
    except (SpecError, ValueError, LookupError, jobs.RateLimited) as exc:
        return None, True, alert(str(exc)), None, no_update
    done = rec.get("status") in ("done", "failed")
    return digest, done, job_status(rec), rec if done else None, to_query(rec["spec"])


@callback(
    Output("lab-job-poll", "disabled", allow_duplicate=True),
    Output("lab-job-status", "children", allow_duplicate=True), Output("lab-rec", "data", allow_duplicate=True),
    Input("lab-job-poll", "n_intervals"), State("lab-job", "data"), State("lab-run-id", "data"),
    prevent_initial_call=True,
)
def poll_job(_n, digest, run_id):
    if not digest:
        return True, no_update, no_update
    try:
        rec = lab_data.record(run_id, digest)
    except state.REDIS_ERRORS:
        return False, alert(state.REDIS_DOWN, "warn"), no_update
    except LookupError:
        return True, alert("The lab job is no longer known; run it again."), None
    if rec.get("status") in ("done", "failed"):
        return True, job_status(rec), rec
    return False, job_status(rec), no_update


def job_status(rec: dict[str, Any]) -> html.Div:
    status = rec.get("status")
    if status == "failed":
        return alert(f"The lab job failed: {rec.get('error')}")
    if status == "done":
        return html.Div(f"Done ({OP_LABELS.get(rec['spec'].get('op', 'patch'))}).", className="muted", id="lab-job-done")
    return html.Div(id="lab-job-running", children=[
        html.Span(className="spinner", role="status", **{"aria-label": "running"}),
        progress_bar(rec.get("progress") or 0.0, rec.get("stage") or status, status, bar_id="lab-job-progress"),
    ])


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _delta(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "–"
    return f"{b - a:+.4g}" + (f" ({(b - a) / a:+.1%})" if a else "")


def _preds(preds: list[dict], list_id: str) -> html.Ol:
    return html.Ol(id=list_id, children=[html.Li([html.Code(repr(p["token"])), f"  {p['prob']:.1%}"]) for p in preds])


def intervention_view(rec: dict[str, Any]) -> list:
    spec = rec["spec"]
    rows = [html.Tr([html.Th(""), html.Th("original"), html.Th("intervened"), html.Th("change")])]
    for key in ("loss", "perplexity", "accuracy"):
        b, a = (rec.get("before") or {}).get(key), (rec.get("after") or {}).get(key)
        if b is not None or a is not None:
            rows.append(html.Tr([html.Td(f"{key} (first {rec['n_prompts']} inputs)"), html.Td(_fmt(b)), html.Td(_fmt(a)),
                                 html.Td(_delta(b, a))], id=f"lab-row-{key}"))
    if rec.get("prompt_loss"):
        b, a = rec["prompt_loss"]["before"], rec["prompt_loss"]["after"]
        rows.append(html.Tr([html.Td(f"loss on prompt {spec['prompt']}"), html.Td(_fmt(b)), html.Td(_fmt(a)),
                             html.Td(_delta(b, a))], id="lab-row-prompt-loss"))
    what = OP_LABELS[spec["op"]] + (f" {spec['keys']}" if "keys" in spec else "") + \
        (f" x {spec['factor']:g}" if "factor" in spec else "")
    heads = "every head" if spec["heads"] == "all" else f"{len(spec['heads'])} head(s)"
    out: list = [html.P([html.B(what), f" in {heads}; objective: {rec['objective']}."], className="muted"),
                 html.Table(rows, className="runs", id="lab-result-table")]
    preds = rec.get("predictions")
    if preds:
        out += [html.P(f"Top {len(preds['before'])} predictions ({preds['what']}) for prompt {preds['prompt']}",
                       className="muted"),
                html.Div(className="grid2", children=[
                    html.Div([html.H4("original"), _preds(preds["before"], "lab-pred-before")]),
                    html.Div([html.H4("intervened"), _preds(preds["after"], "lab-pred-after")])])]
    return out


def patch_view(rec: dict[str, Any]) -> list:
    tokens = [f"{i}:{t}" for i, t in enumerate(token_text.labels(rec["corrupted_tokens"]))]
    diff = [i for i, (a, b) in enumerate(zip(rec["clean_tokens"], rec["corrupted_tokens"])) if a != b]
    resid = np.asarray(rec["resid_normalised"], dtype=np.float64)
    heads = np.asarray(rec["heads_normalised"], dtype=np.float64)
    good, bad = rec["answer_tokens"]
    return [
        html.P([f"Metric: logit difference LD = logit({good!r}) - logit({bad!r}) at the last position. ",
                html.B(f"clean LD {rec['ld_clean']:+.4f}, corrupted LD {rec['ld_corrupted']:+.4f}"),
                f". The inputs differ at position(s) {diff}."], className="muted", id="lab-patch-text"),
        dcc.Graph(id="lab-patch-resid", config={"displaylogo": False}, figure=fl.patch_grid(
            resid, tokens, "Residual stream entering each block, patched at one position (clean -> corrupted)",
            "position (corrupted input's tokens)")),
        dcc.Graph(id="lab-patch-heads", config={"displaylogo": False}, figure=fl.patch_grid(
            heads, [f"H{h}" for h in range(heads.shape[1])], "One head's output patched at every position",
            "head")),
        html.Div(className="grid2", children=[
            html.Div([html.H4("clean: top 5"), _preds(rec["predictions"]["clean"], "lab-pred-clean")]),
            html.Div([html.H4("corrupted: top 5"), _preds(rec["predictions"]["corrupted"], "lab-pred-corrupted")])]),
    ]


@callback(Output("lab-result", "children"), Output("lab-att-card", "style"), Input("lab-rec", "data"))
def render_result(rec):
    if not rec or rec.get("status") != "done":
        return [], {"display": "none"}
    if rec["spec"]["kind"] == "patch":
        return patch_view(rec), {"display": "none"}
    return intervention_view(rec), {"display": "block"}


@callback(Output("lab-att", "figure"), Output("lab-change", "figure"), Output("lab-att-error", "children"),
          Input("lab-rec", "data"), Input("lab-layer", "value"), Input("lab-head", "value"),
          State("lab-run-id", "data"))
def render_attention(rec, layer, head, run_id):
    if not rec or rec.get("status") != "done" or rec["spec"]["kind"] != "intervene" or layer is None or head is None:
        return no_update, no_update, no_update
    try:
        d = lab_data.lab_attention(run_id, rec["job"], layer, head)
    except state.REDIS_ERRORS:
        return no_update, no_update, alert(state.REDIS_DOWN, "warn")
    except (state.ViewError, state.NotReady, LookupError) as exc:
        return empty_figure(str(exc)), no_update, alert(str(exc))
    spec = rec["spec"]
    chosen = spec["heads"] == "all" or [layer, head] in spec["heads"]
    fig = fl.side_by_side(d["tokens"], d["before"], d["tokens"], d["after"], d["difference"],
                          ("original", "intervened", "intervened - original"),
                          f"Layer {layer} head {head}" + (" (intervened)" if chosen else " (not intervened: downstream effect)"),
                          marks=spec.get("keys", ()))
    n_heads = rec["n_heads"]
    grid = np.array([[np.nan] * n_heads if row is None else row for row in rec["pattern_change"]], dtype=np.float64)
    change = fl.change_grid(grid, "Mean |change| of each head's attention pattern"
                            + ("" if len(rec["pattern_layers"]) == rec["n_layers"] else
                               f" (layers {rec['pattern_layers']}: the prompt is long)"))
    return fig, change, ""


@callback(Output("lab-pair", "figure"), Output("lab-pair-error", "children"), Output("lab-pair-poll", "disabled"),
          Input("lab-pa", "value"), Input("lab-pb", "value"), Input("lab-layer", "value"), Input("lab-head", "value"),
          Input("lab-pair-poll", "n_intervals"), State("lab-run-id", "data"), State("lab-info", "data"))
def render_pair(pa, pb, layer, head, _tick, run_id, info):
    """The counterfactual pair; while its patterns are computed on request, their progress line and a poll."""
    if not info or None in (pa, pb, layer, head):
        return no_update, no_update, True
    try:
        d = lab_data.pair(run_id, pa, pb, layer, head)
    except state.REDIS_ERRORS:
        return no_update, alert(state.REDIS_DOWN, "warn"), False
    except state.PatternPending as exc:
        return no_update, alert(str(exc), "info"), False
    except (state.ViewError, state.NotReady, LookupError) as exc:
        return empty_figure(str(exc)), alert(str(exc)), True
    note = "" if len(d["tokens_a"]) == len(d["tokens_b"]) else f" (difference over the first {d['n_common']} tokens)"
    fig = fl.side_by_side(d["tokens_a"], d["a"], d["tokens_b"], d["b"], d["difference"],
                          (f"A: prompt {pa}", f"B: prompt {pb}", "B - A"), f"Layer {layer} head {head}{note}")
    return fig, "", True


def _view_query(req, layer, head, pa, pb, info) -> dict[str, Any] | None:
    """The submitted request (once one ran) and the view (layer, head, pair)."""
    if not info or None in (layer, head, pa, pb):
        return None
    return {**(req or {}), "layer": layer, "head": head, "pa": pa, "pb": pb}


sync_url("lab-url", [("lab-req", "data"), ("lab-layer", "value"), ("lab-head", "value"), ("lab-pa", "value"),
                     ("lab-pb", "value")], ("lab-info", "data"), _view_query, safe=",")
