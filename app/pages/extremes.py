"""Extreme tokens of one text run: why a token is a sink.

* for one prompt and layer (a forward pass on the worker, cached): the attention each token receives, its
  value-vector norm per head, the value contribution (received x value norm) and the residual-stream norm;
  a scatter of received attention vs value norm per head (sinks: much attention, small values) and a token
  table sortable by each column;
* every key position whose received attention exceeds eps in some head (not only the first token), listed
  and marked on the layer's [head x key] map;
* active vs dormant heads: the first-token sink rate per head on built-in domains (prose, code, numbers,
  random tokens) and on the run's prompts labelled by domain; heads whose rate switches are outlined.

View state (``prompt``, ``layer``, ``eps``, ``labels``) lives in the URL.
"""

from __future__ import annotations

from typing import Any
import dash
from dash import Input, Output, State, callback, dash_table, dcc, html, no_update

from app import lab_data, state
from app.components import alert, field, help_text, progress_bar, query_int
from app.run_gate import poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import domains, extremes, token_text
from backend import figures_lab as fl
from backend.vocab import SINK_EPS

dash.register_page(__name__, path_template="/runs/<run_id>/extremes", title="Extreme tokens · Attention Atlas",
                   name="Extreme tokens", order=1)
register_view("extremes", "Extreme tokens", needs="prompt.0.input_ids")

SOURCE = ("Sink tokens receive much attention but carry small value vectors and large residual norms (Guo et al. "
          "2024, 'Active-Dormant Attention Heads'; Gu et al., ICLR 2025, 'When Attention Sink Emerges'); sinks also "
          "form at later tokens (Yu et al. 2024, 'Unveiling and Harnessing Hidden Attention Sinks'). Received = "
          "alpha(k), the mean attention key k receives from the queries that can see it; value contribution = "
          "alpha x |v_k| = the mean over queries of |A[t, k] v_k|.")
DOMAIN_SOURCE = ("A head is dormant on an input when its first token receives alpha > eps (it mostly attends to the "
                 "sink and adds little); sink rate = the fraction of a domain's inputs on which it is (thresholded per "
                 "input, then averaged). Switch score = largest minus smallest rate over domains; outlined heads "
                 f"switch by at least {extremes.SWITCH:g}. Built-in sets: 8 prose sentences, 8 code snippets, 8 "
                 f"number lines, {domains.RANDOM_COUNT} sequences of {domains.RANDOM_LENGTH} random tokens.")


INTEGER_COLUMNS = ("position", "layer", "head")


def _table(table_id: str, columns: list[tuple[str, str, bool]]) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=table_id, data=[], sort_action="native", page_action="native", page_size=20,
        columns=[{"name": n, "id": i, "type": "numeric" if num else "text",
                  **({"format": {"specifier": "d" if i in INTEGER_COLUMNS else ".4~g"}} if num else {})}
                 for n, i, num in columns],
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "Inter, system-ui, sans-serif", "fontSize": 13, "padding": "4px 8px"},
        style_header={"fontWeight": 600})


def _eps(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return SINK_EPS
    return v if 0 <= v < 1 else SINK_EPS


def layout(run_id: str | None = None, **query: str) -> html.Div:
    view = {"prompt": query_int(query.get("prompt")), "layer": query_int(query.get("layer"))}
    return html.Div([
        dcc.Store(id="ext-run-id", data=run_id),
        dcc.Store(id="ext-info"),
        dcc.Store(id="ext-init", data=view),
        dcc.Store(id="ext-job"),
        dcc.Store(id="ext-rec"),
        dcc.Store(id="ext-dom-job"),
        dcc.Store(id="ext-dom-rec"),
        dcc.Location(id="ext-url", refresh=False),
        poll_interval("ext"),
        dcc.Interval(id="ext-job-poll", interval=500, n_intervals=0, disabled=True),
        html.Div(className="card", children=[
            html.H2(["Extreme tokens ", html.Span(help_text(SOURCE), id="ext-source")]),
            html.Div(className="row", children=[
                dcc.Link("← run page", href=f"/runs/{run_id}", className="navlink"),
                dcc.Link("intervention lab", href=f"/runs/{run_id}/lab", className="navlink", id="ext-lab-link"),
            ]),
            html.Div(id="ext-status"),
        ]),
        html.Div(id="ext-card", className="card", style={"display": "none"}, children=[
            html.Div(className="row", children=[
                field("Prompt", dcc.Dropdown(id="ext-prompt", clearable=False), width="380px"),
                field("Layer", dcc.Dropdown(id="ext-layer", clearable=False)),
                field(["eps ", help_text(f"sink threshold on alpha (Gu et al. use {SINK_EPS:g})")],
                      dcc.Input(id="ext-eps", type="number", min=0, max=0.99, step=0.05,
                                value=_eps(query.get("eps", SINK_EPS)), debounce=True), width="90px"),
            ]),
            html.Div(id="ext-job-status"),
            dcc.Graph(id="ext-scatter", config={"displaylogo": False}),
            dcc.Graph(id="ext-received", config={"displaylogo": False}),
            html.H4("Tokens of this layer (click a header to sort)"),
            _table("ext-table", [("position", "position", True), ("token", "token", False),
                                 ("attention received", "received", True), ("value norm", "value_norm", True),
                                 ("value contribution", "contribution", True), ("residual norm", "resid_norm", True)]),
            html.H4(["Sinks in every layer ", help_text(
                f"Key positions with alpha > eps in some head, among keys that at least {extremes.MIN_QUERIES} queries "
                "can see (the last keys of a causal prompt have one or two).")]),
            html.P(id="ext-sinks-text", className="muted"),
            _table("ext-sinks", [("layer", "layer", True), ("head", "head", True), ("position", "position", True),
                                 ("token", "token", False), ("alpha", "alpha", True), ("first token", "first", False)]),
        ]),
        html.Div(id="ext-dom-card", className="card", style={"display": "none"}, children=[
            html.H3(["Active vs dormant heads across domains ", help_text(DOMAIN_SOURCE)]),
            html.Div(className="row", children=[
                field(["Domains of your prompts ", help_text("one label per prompt, comma-separated, e.g. "
                                                             "prose,code,code (blank: 'your prompts')")],
                      dcc.Input(id="ext-labels", value=query.get("labels", ""), debounce=True,
                                style={"minWidth": "320px"}), width="340px"),
            ]),
            html.Div(id="ext-dom-status"),
            dcc.Graph(id="ext-domains", config={"displaylogo": False}),
            _table("ext-switching", [("layer", "layer", True), ("head", "head", True), ("switch score", "score", True),
                                     ("most dormant on", "dormant_on", False), ("most active on", "active_on", False)]),
        ]),
    ])


@callback(Output("ext-info", "data"), Output("ext-poll", "disabled"), Output("ext-status", "children"),
          Input("ext-poll", "n_intervals"), State("ext-run-id", "data"))
def poll(_n, run_id):
    """Wait for the run to finish, then hand its shape and prompts to the views."""
    gate = wait_for_run(run_id, lab_data.load_info)
    if not gate.ready:
        return gate.data, gate.stop, gate.status
    data = gate.data
    return data, True, html.Span(f"{data['model']} · {data['n_layers']} layers x {data['n_heads']} heads",
                                 className="muted")


@callback(Output("ext-card", "style"), Output("ext-dom-card", "style"), Output("ext-prompt", "options"),
          Output("ext-prompt", "value"), Output("ext-layer", "options"), Output("ext-layer", "value"),
          Input("ext-info", "data"), State("ext-init", "data"))
def setup(info, init):
    if not info:
        return {"display": "none"}, {"display": "none"}, no_update, no_update, no_update, no_update
    n, n_layers = len(info["prompts"]), info["n_layers"]
    return ({"display": "block"}, {"display": "block"},
            [{"label": p, "value": i} for i, p in enumerate(info["prompts"])], init["prompt"] if init["prompt"] < n else 0,
            [{"label": f"layer {l}", "value": l} for l in range(n_layers)],
            init["layer"] if init["layer"] < n_layers else 0)


def _submit(run_id: str, spec: dict) -> tuple[str | None, dict | None, Any]:
    try:
        digest, rec = lab_data.submit(run_id, spec)
    except state.REDIS_ERRORS:
        return None, None, alert(state.REDIS_DOWN, "warn")
    except (ValueError, LookupError) as exc:
        return None, None, alert(str(exc))
    return digest, rec, _job_status(rec)


def _job_status(rec: dict[str, Any]) -> Any:
    if rec.get("status") == "failed":
        return alert(f"The job failed: {rec.get('error')}")
    if rec.get("status") == "done":
        return ""
    return progress_bar(rec.get("progress") or 0.0, rec.get("stage") or rec.get("status"), rec.get("status"),
                        bar_id="ext-job-progress")


@callback(Output("ext-job", "data"), Output("ext-rec", "data"), Output("ext-job-status", "children"),
          Output("ext-dom-job", "data"), Output("ext-dom-rec", "data"), Output("ext-dom-status", "children"),
          Output("ext-job-poll", "disabled"),
          Input("ext-prompt", "value"), State("ext-run-id", "data"), State("ext-dom-job", "data"))
def submit(prompt, run_id, dom_job):
    """Changing the prompt runs (or fetches) its extremes job; the domains job is submitted once."""
    if prompt is None:
        return (no_update,) * 7
    digest, rec, status = _submit(run_id, {"kind": "extremes", "prompt": prompt})
    done = rec is not None and rec.get("status") in ("done", "failed")
    if dom_job:
        return digest, rec if done else None, status, no_update, no_update, no_update, done
    dom_digest, dom_rec, dom_status = _submit(run_id, {"kind": "domains"})
    dom_done = dom_rec is not None and dom_rec.get("status") in ("done", "failed")
    return (digest, rec if done else None, status, dom_digest, dom_rec if dom_done else None, dom_status,
            done and dom_done)


@callback(Output("ext-rec", "data", allow_duplicate=True), Output("ext-job-status", "children", allow_duplicate=True),
          Output("ext-dom-rec", "data", allow_duplicate=True), Output("ext-dom-status", "children", allow_duplicate=True),
          Output("ext-job-poll", "disabled", allow_duplicate=True),
          Input("ext-job-poll", "n_intervals"), State("ext-job", "data"), State("ext-dom-job", "data"),
          State("ext-rec", "data"), State("ext-dom-rec", "data"), State("ext-run-id", "data"), prevent_initial_call=True)
def poll_jobs(_n, job, dom_job, rec, dom_rec, run_id):
    out: list[Any] = [no_update] * 4
    waiting = False
    try:
        for i, (digest, have) in enumerate(((job, rec), (dom_job, dom_rec))):
            if not digest or have:
                continue
            r = lab_data.record(run_id, digest)
            out[2 * i + 1] = _job_status(r)
            if r.get("status") in ("done", "failed"):
                out[2 * i] = r
            else:
                waiting = True
    except state.REDIS_ERRORS:
        return no_update, alert(state.REDIS_DOWN, "warn"), no_update, no_update, False
    except LookupError as exc:
        return no_update, alert(str(exc)), no_update, no_update, True
    return (*out, not waiting)


@callback(Output("ext-scatter", "figure"), Output("ext-received", "figure"), Output("ext-table", "data"),
          Output("ext-sinks", "data"), Output("ext-sinks-text", "children"),
          Input("ext-rec", "data"), Input("ext-layer", "value"), Input("ext-eps", "value"))
def render(rec, layer, eps):
    if not rec or rec.get("status") != "done" or layer is None:
        return no_update, no_update, no_update, no_update, no_update
    eps = _eps(eps)
    v = lab_data.extreme_view(rec, layer, eps)
    a, tokens = v["arrays"], token_text.labels(rec["tokens"])
    scatter = fl.value_scatter(a["received"][layer], a["value_norm"][layer], tokens,
                               f"Layer {layer}: attention received vs value norm, one colour per head")
    here = [s for s in v["sinks"] if s["layer"] == layer]
    received = fl.received_map(a["received"][layer], tokens, here, eps, f"Layer {layer}: attention received, sinks ringed")
    rows = [{**s, "token": tokens[s["position"]], "first": "yes" if s["first"] else "no"} for s in v["sinks"]]
    later = sum(not s["first"] for s in v["sinks"])
    text = (f"{len(rows)} (layer, head, key) sink(s) above eps {eps:g}, {later} of them later than the first token."
            if rows else f"No key receives alpha > {eps:g} in any head.")
    return scatter, received, v["table"], rows, text


@callback(Output("ext-domains", "figure"), Output("ext-switching", "data"),
          Input("ext-dom-rec", "data"), Input("ext-labels", "value"), Input("ext-eps", "value"),
          State("ext-run-id", "data"), State("ext-info", "data"))
def render_domains(rec, labels, eps, run_id, info):
    if not rec or rec.get("status") != "done" or not info:
        return no_update, no_update
    labels = extremes.parse_labels(labels, len(info["prompts"]), domains.RUN_DOMAIN)
    v = lab_data.domain_view(rec, labels, _eps(eps))
    fig = fl.domain_grids(v["rates"], v["domains"], v["counts"], v["switch"], v["switching"],
                          f"First-token sink rate per head (alpha > {_eps(eps):g}) by domain")
    return fig, v["switching"]


def _view_query(prompt, layer, eps, labels, info) -> dict[str, Any] | None:
    if not info or prompt is None or layer is None:
        return None
    q: dict[str, Any] = {"prompt": prompt, "layer": layer, "eps": f"{_eps(eps):g}"}
    if labels:
        q["labels"] = labels
    return q


sync_url("ext-url", [("ext-prompt", "value"), ("ext-layer", "value"), ("ext-eps", "value"), ("ext-labels", "value")],
         ("ext-info", "data"), _view_query, safe=",")
