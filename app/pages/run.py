"""A run: status with a progress bar, then the token view (click a token: where it attends).

View state (prompt, layer, head, token) lives in the URL query string, so the URL re-opens the same
view in any browser: from cache, or after a deterministic recomputation if the cache expired.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import dash
import numpy as np
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app import state
from app.components import alert, progress_bar, query_int
from backend import figures, jobs

dash.register_page(__name__, path_template="/runs/<run_id>", title="Run · Attention Atlas", name="Run")

VIEW_KEYS = ("prompt", "layer", "head", "token")
SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<|endoftext|>", "<bos>", "<eos>"}


def layout(run_id: str | None = None, **query: str) -> html.Div:
    view = {k: query_int(query.get(k)) for k in VIEW_KEYS}
    return html.Div([
        dcc.Store(id="run-id", data=run_id),
        dcc.Store(id="run-info"),
        dcc.Store(id="run-view", data=view),
        dcc.Location(id="run-url", refresh=False),
        dcc.Interval(id="run-poll", interval=700, n_intervals=0),
        html.Div(className="card", children=[
            html.H2(id="run-title", children=f"Run {run_id}"),
            html.Div(id="run-model", className="muted"),
            html.Div(id="run-status", children=progress_bar(0, "loading…", "queued")),
            html.Div(id="run-error"),
            html.Div(id="run-notices"),
            html.Div(className="row", children=[
                html.Button("Cancel", id="run-cancel", className="btn secondary", n_clicks=0),
                html.Div(id="run-links"),
            ]),
        ]),
        html.Div(id="run-view-card", className="card", style={"display": "none"}, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[html.Label("Prompt"), dcc.Dropdown(id="run-prompt", clearable=False)]),
                html.Div(className="field", children=[html.Label("Layer"), dcc.Dropdown(id="run-layer", clearable=False)]),
                html.Div(className="field", children=[html.Label("Head"), dcc.Dropdown(id="run-head", clearable=False)]),
                html.Button("Download pattern (JSON)", id="run-download-btn", className="btn secondary", n_clicks=0),
                dcc.Download(id="run-download"),
            ]),
            html.P("Click a token to see where it attends.", className="muted"),
            html.Div(id="run-tokens", className="tokens"),
            html.Div(id="run-view-error"),
            html.Div(className="grid2", children=[
                dcc.Graph(id="run-row", config={"displaylogo": False}),
                dcc.Graph(id="run-lines", config={"displaylogo": False}),
            ]),
            dcc.Graph(id="run-heatmap", config={"displaylogo": False}),
        ]),
    ])


@callback(
    Output("run-status", "children"), Output("run-error", "children"), Output("run-info", "data"),
    Output("run-poll", "disabled"), Output("run-model", "children"), Output("run-notices", "children"),
    Output("run-cancel", "disabled"),
    Input("run-poll", "n_intervals"), State("run-id", "data"), State("run-info", "data"),
)
def poll(_n, run_id, info):
    """Refresh the status until the run is finished; then hand its info to the view."""
    try:
        m = state.run_status(run_id)
    except state.REDIS_ERRORS:
        return no_update, alert(state.REDIS_DOWN, "warn"), no_update, False, no_update, no_update, True
    if m is None:
        return progress_bar(0, "unknown run", "failed"), alert(
            f"No run with id {run_id}. It may have been deleted; start a new analysis."
        ), None, True, "", "", True
    model = m.get("model") or {}
    n_in = len((m.get("spec") or {}).get("inputs", []))
    model_text = f"{model.get('ref')} · {model.get('model_type')} · {n_in} input(s) · status {m['status']}"
    finished = m["status"] in ("done", "failed", "cancelled")
    error = alert(m["error"]) if m["status"] in ("failed", "cancelled") and m["error"] else ""
    new_info = no_update
    events = [alert(e, "warn") for e in m.get("events") or []]  # e.g. a worker died and the run was retried
    notices = events or no_update
    if m["status"] == "done":
        mi = m["info"] or {}
        new_info = {"tokens": mi.get("tokens", []), "n_layers": mi.get("n_layers"), "n_heads": mi.get("n_heads"),
                    "kind": mi.get("kind", "text"), "sizes": sorted(m.get("sizes") or {})} if info is None else no_update
        notices = events + [alert(n, "warn") for n in mi.get("notices", [])]
    return (progress_bar(m["progress"], m["stage"], m["status"]), error, new_info, finished, model_text,
            notices, finished)


@callback(Output("run-error", "children", allow_duplicate=True), Input("run-cancel", "n_clicks"),
          State("run-id", "data"), prevent_initial_call=True)
def on_cancel(_n, run_id):
    try:
        ok = jobs.cancel(state.cache(), state.settings(), run_id)
    except state.REDIS_ERRORS:
        return alert(state.REDIS_DOWN, "warn")
    return alert("Cancelling…" if ok else "This run is no longer running.", "info")


@callback(
    Output("run-view-card", "style"), Output("run-prompt", "options"), Output("run-layer", "options"),
    Output("run-head", "options"), Output("run-prompt", "value"), Output("run-layer", "value"),
    Output("run-head", "value"), Output("run-links", "children"),
    Input("run-info", "data"), State("run-view", "data"), State("run-id", "data"),
)
def setup_controls(info, view, run_id):
    if not info:
        return {"display": "none"}, [], [], [], None, None, None, ""
    toks = info["tokens"]
    prompts = [{"label": f"{i + 1}: {' '.join(t[:12])[:60]}", "value": i} for i, t in enumerate(toks)]
    layers = [{"label": f"layer {l}", "value": l} for l in range(info["n_layers"])]
    heads = [{"label": f"head {h}", "value": h} for h in range(info["n_heads"])]
    clamp = lambda v, n: v if isinstance(v, int) and 0 <= v < n else 0  # noqa: E731
    sizes = info.get("sizes", [])
    links = [dcc.Link(label, href=f"/runs/{run_id}/{seg}", className="navlink", id=f"run-link-{seg}")
             for seg, label in VIEW_LINKS if any(s.startswith(VIEW_NEEDS[seg]) for s in sizes)]
    return ({"display": "block"}, prompts, layers, heads, clamp(view["prompt"], len(toks)),
            clamp(view["layer"], info["n_layers"]), clamp(view["head"], info["n_heads"]), links)


# (url segment, label) of further views of a run, and the array prefix each needs; pages register
# themselves through app.view_links.register_view (a page importing this module would load it twice)
from app.view_links import VIEW_LINKS, VIEW_NEEDS  # noqa: E402


@callback(
    Output("run-view", "data"),
    Input({"type": "run-token", "index": ALL}, "n_clicks"), Input("run-prompt", "value"),
    State("run-view", "data"), prevent_initial_call=True,
)
def pick_token(_clicks, prompt, view):
    trig = ctx.triggered_id
    view = dict(view or {})
    if isinstance(trig, dict) and trig.get("type") == "run-token":
        if not any(c for c in _clicks if c):
            return no_update
        view["token"] = int(trig["index"])
    elif trig == "run-prompt" and prompt is not None and prompt != view.get("prompt"):
        view["prompt"], view["token"] = prompt, 0
    else:
        return no_update
    return view


@callback(
    Output("run-tokens", "children"), Output("run-row", "figure"), Output("run-lines", "figure"),
    Output("run-heatmap", "figure"), Output("run-view-error", "children"), Output("run-url", "search"),
    Input("run-prompt", "value"), Input("run-layer", "value"), Input("run-head", "value"),
    Input("run-view", "data"), State("run-id", "data"), State("run-info", "data"),
)
def render(prompt, layer, head, view, run_id, info):
    """Draw the chosen head for the chosen prompt and token; mirror the state into the URL."""
    if not info or prompt is None or layer is None or head is None:
        return no_update, no_update, no_update, no_update, no_update, no_update
    token = (view or {}).get("token", 0) if (view or {}).get("prompt", prompt) == prompt else 0
    search = "?" + urlencode({"prompt": prompt, "layer": layer, "head": head, "token": token})
    try:
        tokens, pat = state.pattern(run_id, prompt, layer, head)
    except (state.ViewError, state.NotReady, LookupError) as exc:
        empty = figures.attention_row(["-"], np.zeros(1), 0)
        return [], empty, empty, empty, alert(str(exc), "warn"), search
    except state.REDIS_ERRORS:
        return no_update, no_update, no_update, no_update, alert(state.REDIS_DOWN, "warn"), no_update
    token = token if 0 <= token < len(tokens) else 0
    buttons = [
        html.Button(t, id={"type": "run-token", "index": i}, n_clicks=0, title=f"position {i}",
                    className="token" + (" selected" if i == token else "") + (" special" if t in SPECIAL else ""))
        for i, t in enumerate(tokens)
    ]
    label = f"layer {layer} head {head}"
    return (
        buttons,
        figures.attention_row(tokens, pat[token], token, title=f"{label}: attention from '{tokens[token]}' (position {token})"),
        figures.attention_lines(tokens, pat, query=token, title=f"{label}: lines from '{tokens[token]}'"),
        figures.pattern_heatmap(tokens, pat, title=f"{label}: full pattern (rows = queries)", query=token),
        "",
        search,
    )


@callback(Output("run-download", "data"), Input("run-download-btn", "n_clicks"),
          State("run-id", "data"), State("run-prompt", "value"), State("run-layer", "value"),
          State("run-head", "value"), prevent_initial_call=True)
def download(_n, run_id, prompt, layer, head):
    tokens, pat = state.pattern(run_id, prompt, layer, head)
    body = {"run_id": run_id, "prompt": prompt, "layer": layer, "head": head, "tokens": tokens,
            "pattern": pat.round(6).tolist()}
    return dict(content=json.dumps(body), filename=f"attention_{run_id[:8]}_p{prompt}_L{layer}_H{head}.json")
