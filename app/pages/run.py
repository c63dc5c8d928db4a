"""A run: status with a progress bar, then the token view (click a token: where it attends).

View state (prompt, layer, head, token) lives in the URL query string, so the URL re-opens the same
view in any browser: from cache, or after a deterministic recomputation if the cache expired.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode

import dash
import numpy as np
from dash import ALL, Input, Output, State, callback, clientside_callback, ctx, dcc, html, no_update

from app import not_found, run_data, state
from app.components import alert, figure_kwargs, help_text, in_layout, progress_bar, query_int
from app.run_gate import Gate, gate_at_layout, poll_interval, sync_url, wait_for_run
from backend import figures, jobs, token_text

dash.register_page(__name__, path_template="/runs/<run_id>", title="Run · Attention Atlas", name="Run")

VIEW_KEYS = ("prompt", "layer", "head", "token")
SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<|endoftext|>", "<bos>", "<eos>"}
MAX_LINES = 24
"""The lines view draws the strongest edges of the chosen token only (a 512-token prompt would draw 512)."""


def layout(run_id: str | None = None, **query: str) -> html.Div:
    if not run_id or "/" in run_id:  # /runs/<id>/<no such view> matches this page's template too
        return not_found.view(f"A run has no page “{(run_id or '').split('/', 1)[-1]}”.")
    view = {k: query_int(query.get(k)) for k in VIEW_KEYS}
    words = query.get("words") == "1"
    # a finished run's status, pickers and figures are in the layout: its page needs no callback round before them
    ready = gate_at_layout(run_id, run_data.load_info)
    status, info, _, model, notices, cancel_off, actions = (
        _gate_outputs(ready, None) if ready else (progress_bar(0, "loading…", "queued"), None, False, None, None, False, {}))
    card, prompts, layers, heads, prompt, layer, head, links = setup_controls(info, view, run_id)
    drawn = (render(prompt, layer, head, view, ["1"] if words else [], 0, run_id, info) if ready
             else (no_update,) * 5 + (True,))
    chips, row_fig, lines_fig, heat_fig, view_error, pattern_poll_off = (in_layout(v) for v in drawn)
    shown = _view_query(prompt, layer, head, view, ["1"] if words else [], info) if ready else None
    heads_href = heads_link("?" + urlencode(shown), run_id) if shown else f"/runs/{run_id}/heads"
    return html.Div([
        dcc.Store(id="run-id", data=run_id),
        dcc.Store(id="run-info", data=info),
        dcc.Store(id="run-view", data=view),
        dcc.Location(id="run-url", refresh=False),
        poll_interval("run", ready),
        dcc.Interval(id="run-pattern-poll", interval=PATTERN_POLL_MS, n_intervals=0, disabled=pattern_poll_off),
        html.Div(className="card", children=[
            html.H2(id="run-title", children=f"Run {run_id}"),
            html.Div(id="run-model", className="muted", children=model),
            html.Div(id="run-status", children=status),
            html.Div(id="run-error"),
            html.Div(id="run-notices", children=notices),
            html.Div(className="row", id="run-actions", style=actions, children=[  # shown while queued or running
                html.Button("Cancel", id="run-cancel", className="btn secondary", n_clicks=0, disabled=cancel_off),
            ]),
            html.Div(id="run-links", className="view-list", children=links),
        ]),
        # hidden by visibility, not display: a figure drawn in a display:none card keeps a 700 px width
        html.Div(id="run-view-card", className="card", style=card, children=[
            html.Div(className="row", children=[
                html.Div(className="field", children=[html.Label("Prompt"), dcc.Dropdown(
                    id="run-prompt", clearable=False, options=prompts, value=prompt)]),
                html.Div(className="field", children=[html.Label("Layer"), dcc.Dropdown(
                    id="run-layer", clearable=False, options=layers, value=layer)]),
                html.Div(className="field", children=[html.Label("Head"), dcc.Dropdown(
                    id="run-head", clearable=False, options=heads, value=head)]),
                dcc.Checklist(id="run-words", options=[{"label": " Merge sub-words into words", "value": "1"}],
                              value=["1"] if words else [], className="field"),
                html.Button("Download pattern (JSON)", id="run-download-btn", className="btn secondary", n_clicks=0),
                dcc.Download(id="run-download"),
                dcc.Link("All heads for this token →", id="run-heads-link", href=heads_href,
                         className="navlink"),
            ]),
            html.P(["Click a token to see where it attends. ", help_text(
                "Merging sub-words: a word's attention to another word is the sum over the key's pieces, averaged "
                "over the query's pieces (Clark et al. 2019; BertViz), so each row still sums to 1."
            )], className="muted"),
            html.Div(id="run-tokens", className="tokens", children=chips),
            html.Div(id="run-view-error", children=view_error),
            html.Div(className="grid2", children=[
                dcc.Graph(id="run-row", config={"displaylogo": False}, **figure_kwargs(row_fig)),
                dcc.Graph(id="run-lines", config={"displaylogo": False}, **figure_kwargs(lines_fig)),
            ]),
            html.Div(className="scroll-figure", children=dcc.Graph(id="run-heatmap", config={"displaylogo": False},
                                                                   **figure_kwargs(heat_fig))),
        ]),
    ])


DOWNLOAD_WAIT_S = 30.0
"""The download waits this long for a pattern still being computed (the view shows it computing meanwhile)."""
PATTERN_POLL_MS = 600
"""How often the token view looks again while its pattern is computed on request (``backend.pattern_jobs``)."""
HIDDEN = {"visibility": "hidden", "height": 0, "overflow": "hidden", "padding": 0, "border": 0}
SHOWN = {"visibility": "visible"}


def _model_line(m: dict) -> str:
    model = m.get("model") or {}
    n_in = len((m.get("spec") or {}).get("inputs", []))
    return f"{model.get('ref')} · {model.get('model_type')} · {n_in} input(s) · status {m['status']}"


@callback(
    Output("run-status", "children"), Output("run-info", "data"), Output("run-poll", "disabled"),
    Output("run-model", "children"), Output("run-notices", "children"), Output("run-cancel", "disabled"),
    Output("run-actions", "style"),
    Input("run-poll", "n_intervals"), State("run-id", "data"), State("run-info", "data"),
)
def poll(_n, run_id, info):
    """Refresh the status until the run is finished (through the run gate); then hand its info to the view.
    The cancel button shows only while there is something to cancel."""
    return _gate_outputs(wait_for_run(run_id, run_data.load_info), info)


def _gate_outputs(gate: Gate, info: dict | None) -> tuple:
    """The poll's outputs for where the run stands (in the layout for a finished run)."""
    model = _model_line(gate.manifest) if gate.manifest else gate.blank
    actions = {"display": "none"} if gate.stop else {}
    if not gate.ready:
        return gate.status, gate.data, gate.stop, model, gate.blank, gate.stop, actions
    events = [alert(e, "warn") for e in gate.manifest.get("events") or []]  # e.g. a worker died, the run retried
    notices = events + [alert(n, "warn") for n in gate.data.pop("notices", [])]
    return (progress_bar(1.0, "done", "done"), gate.data if info is None else no_update, True, model, notices, True,
            actions)


@callback(Output("run-error", "children"), Input("run-cancel", "n_clicks"),
          State("run-id", "data"), prevent_initial_call=True)
def on_cancel(_n, run_id):
    try:
        ok = jobs.cancel(state.cache(), state.settings(), run_id)
    except state.REDIS_ERRORS:
        return alert(state.REDIS_DOWN, "warn")
    return alert("Cancelling…" if ok else "This run is no longer running.", "info")


def view_list(run_id: str, kind: str, sizes: list[str]) -> list:
    """Every view of the run: a link when its analysis is there, else a link marked "not computed yet" (the view
    offers to compute it), then the compare pages."""
    items = []
    for seg, label in VIEW_LINKS:
        if kind not in VIEW_KINDS.get(seg, ("text", "image")):
            continue
        have = any(s.startswith(VIEW_NEEDS[seg]) for s in sizes)
        items.append(html.Li(dcc.Link(
            [label] + ([] if have else [html.Span(" · not computed yet, opens with a button to compute it",
                                                  className="muted")]),
            href=f"/runs/{run_id}/{seg}", className="navlink" + ("" if have else " not-computed"),
            id=f"run-link-{seg}")))
    items.append(html.Li(dcc.Link("Compare with another run", href=f"/compare?a={run_id}", className="navlink",
                                  id="run-link-compare")))
    return [html.H3("Views of this run"), html.Ul(items)]


@callback(
    Output("run-view-card", "style"), Output("run-prompt", "options"), Output("run-layer", "options"),
    Output("run-head", "options"), Output("run-prompt", "value"), Output("run-layer", "value"),
    Output("run-head", "value"), Output("run-links", "children"),
    Input("run-info", "data"), State("run-view", "data"), State("run-id", "data"), prevent_initial_call=True,
)
def setup_controls(info, view, run_id):
    if not info:
        return HIDDEN, [], [], [], None, None, None, ""
    toks = info["tokens"]
    prompts = [{"label": f"{i + 1}: {token_text.preview(t)}", "value": i}
               for i, t in enumerate(toks)]
    layers = [{"label": f"layer {l}", "value": l} for l in range(info["n_layers"])]
    heads = [{"label": f"head {h}", "value": h} for h in range(info["n_heads"])]
    clamp = lambda v, n: v if isinstance(v, int) and 0 <= v < n else 0  # noqa: E731
    return (SHOWN, prompts, layers, heads, clamp(view["prompt"], len(toks)),
            clamp(view["layer"], info["n_layers"]), clamp(view["head"], info["n_heads"]),
            view_list(run_id, info.get("kind", "text"), info.get("sizes", [])))


# (url segment, label) of further views of a run, and the array prefix each needs; pages register
# themselves through app.view_links.register_view (a page importing this module would load it twice)
from app.view_links import VIEW_KINDS, VIEW_LINKS, VIEW_NEEDS  # noqa: E402


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


def token_chips(shown: list[str], raw: list[str], selected: int) -> list:
    """One button per token (readable text; a newline token ends its line), special tokens marked."""
    chips: list = []
    for i, (t, r) in enumerate(zip(shown, raw)):
        special = r in SPECIAL or token_text.is_special(r)
        chips.append(html.Button(
            token_text.one_line(t) if "\n" in t or not t.strip() else t, id={"type": "run-token", "index": i},
            n_clicks=0, title=f"position {i}: {r!r}",
            className="token" + (" selected" if i == selected else "") + (" special" if special else "")))
        if t.endswith("\n"):
            chips.append(html.Span(className="token-break"))
    return chips


def strongest_edges_note(n_keys: int, shown: int) -> str:
    return f" (the {shown} strongest of {n_keys} keys)" if shown < n_keys else ""


@callback(
    Output("run-tokens", "children"), Output("run-row", "figure"), Output("run-lines", "figure"),
    Output("run-heatmap", "figure"), Output("run-view-error", "children"), Output("run-pattern-poll", "disabled"),
    Input("run-prompt", "value"), Input("run-layer", "value"), Input("run-head", "value"),
    Input("run-view", "data"), Input("run-words", "value"), Input("run-pattern-poll", "n_intervals"),
    State("run-id", "data"), State("run-info", "data"),
    prevent_initial_call=True,
)
def render(prompt, layer, head, view, words, _tick, run_id, info):
    """Draw the chosen head for the chosen prompt and token (the URL follows through :func:`_view_query`). A
    pattern computed on request shows its progress line and the view polls until it is there."""
    if not info or prompt is None or layer is None or head is None:
        return no_update, no_update, no_update, no_update, no_update, True
    merge = "1" in (words or [])
    token = _view_token(view, prompt)
    try:
        raw, pat = run_data.pattern(run_id, prompt, layer, head)
    except state.PatternPending as exc:
        return no_update, no_update, no_update, no_update, alert(str(exc), "info"), False
    except (state.ViewError, state.NotReady, LookupError) as exc:
        empty = figures.attention_row(["-"], np.zeros(1), 0)
        return [], empty, empty, empty, alert(str(exc), "warn"), True
    except state.REDIS_ERRORS:
        return no_update, no_update, no_update, no_update, alert(state.REDIS_DOWN, "warn"), False
    if merge:
        groups = token_text.word_groups(raw)
        shown = token_text.word_text(raw, groups)
        raw = [" ".join(raw[i] for i in g) for g in groups]
        pat = token_text.merge_words(pat, groups)
    else:
        shown = token_text.readable_tokens(raw)
    token = token if 0 <= token < len(shown) else 0
    labels = [token_text.one_line(t) for t in shown]
    label = f"layer {layer} head {head}"
    unit = "word" if merge else "position"
    n_lines = min(MAX_LINES, len(labels))
    return (
        token_chips(shown, raw, token),
        figures.attention_row(labels, pat[token], token,
                              title=f"{label}: attention from '{labels[token].strip()}' ({unit} {token})"),
        figures.attention_lines(labels, pat, query=token, max_lines=MAX_LINES,
                                title=f"{label}: lines from '{labels[token].strip()}'"
                                      + strongest_edges_note(len(labels), n_lines)),
        figures.pattern_heatmap(labels, pat, query=token, window=figures.WINDOW,
                                title=f"{label}: " + ("full pattern (rows = queries)" if len(labels) <= figures.WINDOW
                                                      else f"the {figures.WINDOW} queries around {unit} {token}")),
        "", True,
    )


def _view_token(view: dict | None, prompt: int) -> int:
    """The query token of the view: the clicked one while it belongs to the prompt on screen, else 0."""
    return (view or {}).get("token", 0) if (view or {}).get("prompt", prompt) == prompt else 0


def _view_query(prompt, layer, head, view, words, info) -> dict | None:
    """The view in the URL: prompt, layer, head, query token (0 when outside the prompt) and word merging."""
    if not info or prompt is None or layer is None or head is None:
        return None
    merge = "1" in (words or [])
    token = _view_token(view, prompt)
    tokens = info["tokens"][prompt] if isinstance(prompt, int) and 0 <= prompt < len(info["tokens"]) else None
    if tokens is not None:
        n = len(token_text.word_groups(tokens)) if merge else len(tokens)
        token = token if 0 <= token < n else 0
    return {"prompt": prompt, "layer": layer, "head": head, "token": token, **({"words": 1} if merge else {})}


sync_url("run-url", [("run-prompt", "value"), ("run-layer", "value"), ("run-head", "value"), ("run-view", "data"),
                     ("run-words", "value")], ("run-info", "data"), _view_query)  # on load the URL holds the view


def heads_link(search: str, run_id: str) -> str:
    """The all-heads view of the prompt and token on screen (and the word merging)."""
    q = parse_qs((search or "").lstrip("?"))
    keep = {k: q[k][0] for k in ("prompt", "token", "words") if q.get(k)}
    return f"/runs/{run_id}/heads" + ("?" + urlencode(keep) if keep else "")


# the same in the browser, as the URL follows the view (no request: the location reports its search on load too)
clientside_callback(
    """function(search, runId) {
        const q = new URLSearchParams(search || ""), keep = new URLSearchParams();
        for (const k of ["prompt", "token", "words"]) { if (q.get(k)) { keep.set(k, q.get(k)); } }
        const s = keep.toString();
        return "/runs/" + runId + "/heads" + (s ? "?" + s : "");
    }""",
    Output("run-heads-link", "href"), Input("run-url", "search"), State("run-id", "data"), prevent_initial_call=True,
)


@callback(Output("run-download", "data"), Input("run-download-btn", "n_clicks"),
          State("run-id", "data"), State("run-prompt", "value"), State("run-layer", "value"),
          State("run-head", "value"), prevent_initial_call=True)
def download(_n, run_id, prompt, layer, head):
    try:
        tokens, pat = run_data.pattern(run_id, prompt, layer, head, wait_s=DOWNLOAD_WAIT_S)
    except (state.ViewError, state.NotReady, LookupError) + state.REDIS_ERRORS:
        return no_update
    body = {"run_id": run_id, "prompt": prompt, "layer": layer, "head": head, "tokens": tokens,
            "pattern": pat.round(6).tolist()}
    return dict(content=json.dumps(body), filename=f"attention_{run_id[:8]}_p{prompt}_L{layer}_H{head}.json")
