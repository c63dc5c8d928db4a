"""All heads of a run at once (BertViz's model view): a layer x head grid of small attention heatmaps for one
prompt, or of one query token's attention; a click on a cell opens that head in the token view.

View state in the URL: ``?prompt=P&token=T&words=1&scale=head`` (no ``token``: every query, the whole pattern).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from app import heads_data, state
from app.components import alert, empty_figure, field, help_text, in_layout, query_int, store
from app.run_gate import gate_at_layout, poll_interval, sync_url, wait_for_run
from app.view_links import register_view
from backend import figures_heads, token_text

dash.register_page(__name__, path_template="/runs/<run_id>/heads", title="All heads · Attention Atlas",
                   name="All heads", order=1)  # before the run page, whose /runs/<run_id> would match too
register_view("heads", "All heads (model view)", needs="prompt.0.input_ids", kinds=("text",))

PATTERN_POLL_MS = 700
"""How often the grid looks again while the full patterns of a query token's view are computed on request."""
ALL = -1
"""The query dropdown's value for "every query" (the whole pattern in each cell)."""
HEADS_HELP = (
    "BertViz's model view (Vig 2019): every head's attention pattern for one prompt, queries down and keys across "
    "in each cell. A prompt longer than 32 positions is shown in 32 runs of consecutive positions: a run's attention "
    "to another is the sum over the key run's positions, averaged over the query run's, so each row still sums to "
    "1. The hover names each head's most-attended key at full resolution."
)


def parse_view(query: dict[str, Any]) -> dict[str, Any]:
    """View state from URL query values (bad values fall back to defaults)."""
    token = query.get("token")
    return {"prompt": query_int(query.get("prompt")), "token": query_int(token) if token not in (None, "") else ALL,
            "words": query.get("words") == "1", "scale": query.get("scale") if query.get("scale") in
            figures_heads.SCALES else "shared"}


def layout(run_id: str | None = None, **query: str) -> html.Div:
    v = parse_view(query)
    words = ["1"] if v["words"] else []
    ready = gate_at_layout(run_id, heads_data.load_info)
    # a cached run's grid is in the layout: the page needs no callback round before it (the callbacks below wait
    # for a change; while the run is not finished, the poll fills them in turn)
    run = ready.data if ready else None
    body_style, prompt_options, prompt = setup_view(run, v)
    token_opts, token = token_choices(prompt, words, run, v, None)
    fig, summary, error, pattern_poll_off = grid_view(token, v["scale"], prompt, words, run_id, run)
    return html.Div([
        dcc.Store(id="heads-run-id", data=run_id), store("heads-run", run),
        dcc.Store(id="heads-view", data=v),
        dcc.Location(id="heads-url", refresh=False),
        dcc.Location(id="heads-go", refresh="callback-nav"),
        poll_interval("heads", ready),
        dcc.Interval(id="heads-pattern-poll", interval=PATTERN_POLL_MS, n_intervals=0,
                     disabled=in_layout(pattern_poll_off, True)),
        html.Div(className="card", children=[
            html.H2(["All heads", help_text(HEADS_HELP)]),
            html.Div(id="heads-model", className="muted", children=_model_text(run, run_id) if run else None),
            dcc.Link("← back to the run", href=f"/runs/{run_id}", className="muted"),
            html.Div(id="heads-status", children="" if ready else html.P("loading…", className="muted")),
        ]),
        html.Div(id="heads-body", className="card", style=body_style, children=[
            html.Div(className="row", children=[
                field("Prompt", dcc.Dropdown(id="heads-prompt", clearable=False, options=prompt_options,
                                             value=prompt), "260px"),
                field("Query token", dcc.Dropdown(id="heads-token", clearable=False, options=token_opts,
                                                  value=in_layout(token)), "220px"),
                field("Colour", dcc.RadioItems(id="heads-scale", value=v["scale"], options=[
                    {"label": "attention (0 – 1)", "value": "shared"},
                    {"label": "each head to its max", "value": "head"}],
                    inputStyle={"marginRight": "4px", "marginLeft": "8px"}), "300px"),
                dcc.Checklist(id="heads-words", options=[{"label": " Merge sub-words into words", "value": "1"}],
                              value=words, className="field"),
            ]),
            html.Div(id="heads-summary", className="muted", children=in_layout(summary)),
            html.Div(id="heads-error", children=in_layout(error)),
            dcc.Loading(dcc.Graph(id="heads-grid", config={"displaylogo": False},
                                  figure=in_layout(fig, None) or empty_figure())),
            html.Div(id="heads-link"),
        ]),
    ])


@callback(
    Output("heads-run", "data"), Output("heads-status", "children"), Output("heads-poll", "disabled"),
    Output("heads-model", "children"), Input("heads-poll", "n_intervals"), State("heads-run-id", "data"),
)
def load(_n, run_id):
    """Poll until the run is finished, then load its shape and tokens once."""
    gate = wait_for_run(run_id, heads_data.load_info)
    if not gate.ready:
        return gate.data, gate.status, gate.stop, gate.blank
    return gate.data, "", True, _model_text(gate.data, run_id)


def _model_text(run: dict[str, Any], run_id: str) -> str:
    return f"{run['model']} · {run['n_layers']} layers × {run['n_heads']} heads · run {run_id[:12]}"


@callback(
    Output("heads-body", "style"), Output("heads-prompt", "options"), Output("heads-prompt", "value"),
    Input("heads-run", "data"), State("heads-view", "data"), prevent_initial_call=True,  # a cached run: in the layout
)
def setup(run, view):
    return setup_view(run, view)


def setup_view(run: dict[str, Any] | None, view: dict[str, Any]) -> tuple:
    """(body style, prompt options, prompt) for the run's info (None: not loaded yet)."""
    if not run:
        return {"display": "none"}, [], None
    stored = set(run["stored"])
    options = [{"label": f"{i + 1}: {token_text.preview(t)}"
                         + ("" if i in stored else " (patterns not stored: too long)"), "value": i}
               for i, t in enumerate(run["tokens"])]
    p = view["prompt"] if 0 <= view["prompt"] < len(options) else 0
    return {"display": "block"}, options, p


def _shown(run: dict[str, Any], prompt: int, words: bool) -> list[str]:
    raw = run["tokens"][prompt]
    if words:
        return [token_text.one_line(t) for t in token_text.word_text(raw, token_text.word_groups(raw))]
    return token_text.labels(raw)


@callback(
    Output("heads-token", "options"), Output("heads-token", "value"),
    Input("heads-prompt", "value"), Input("heads-words", "value"), State("heads-run", "data"),
    State("heads-view", "data"), State("heads-token", "value"), prevent_initial_call=True,  # in the layout
)
def token_options(prompt, words, run, view, current):
    return token_choices(prompt, words, run, view, current)


def token_choices(prompt: int | None, words: list | None, run: dict[str, Any] | None, view: dict[str, Any],
                  current: int | None) -> tuple:
    """The query-token choices of the prompt (words when merged); the URL's token on first load."""
    if not run or prompt is None:
        return [], no_update
    shown = _shown(run, prompt, "1" in (words or []))
    options = [{"label": "every query (whole pattern)", "value": ALL}] + [
        {"label": f"{i}: {t}", "value": i} for i, t in enumerate(shown)]
    wanted = view["token"] if current is None and view["prompt"] == prompt else ALL
    return options, wanted if wanted == ALL or 0 <= wanted < len(shown) else ALL


@callback(
    Output("heads-grid", "figure"), Output("heads-summary", "children"), Output("heads-error", "children"),
    Output("heads-pattern-poll", "disabled"),
    Input("heads-token", "value"), Input("heads-scale", "value"), Input("heads-pattern-poll", "n_intervals"),
    State("heads-prompt", "value"), State("heads-words", "value"), State("heads-run-id", "data"),
    State("heads-run", "data"), prevent_initial_call=True,  # a cached run: in the layout
)
def render(token, scale, _tick, prompt, words, run_id, run):
    return grid_view(token, scale, prompt, words, run_id, run, polled=ctx.triggered_id == "heads-pattern-poll")


def grid_view(token: int | None, scale: str | None, prompt: int | None, words: list | None, run_id: str | None,
              run: dict[str, Any] | None, polled: bool = False) -> tuple:
    """(figure, summary, error, pattern poll disabled): every head for the chosen prompt (and query token); while
    full patterns are computed on request, say so and poll (``polled``: this is the poll's look, keep the figure)."""
    if not run or prompt is None or token is None:
        return no_update, no_update, no_update, True
    q = None if token == ALL else int(token)
    try:
        g = heads_data.grid(run_id, prompt, q, "1" in (words or []))
    except state.PatternPending as exc:
        fig = no_update if polled else empty_figure(str(exc))
        return fig, "", alert(str(exc), "info"), False
    except (state.ViewError, state.NotReady, LookupError) as exc:
        return empty_figure(str(exc)), "", alert(str(exc), "warn"), True
    except state.REDIS_ERRORS:
        return no_update, no_update, alert(state.REDIS_DOWN, "warn"), False
    hover = figures_heads.hover_texts(g.labels, g.top, g.weight, q)
    what = "the whole pattern (rows = queries, columns = keys)" if q is None else \
        f"attention from {q}:{g.labels[q]} to each key"
    fig = figures_heads.heads_grid(g.thumbs, hover, title=f"Prompt {prompt + 1}: {what}", scale=scale or "shared")
    n = len(g.labels)
    unit = "words" if "1" in (words or []) else "positions"
    summary = (f"{n} {unit}" + (f", shown in {g.thumbs.shape[-1]} runs of up to {g.per_bin} consecutive {unit}"
                                if g.per_bin > 1 else "") + ". Click a cell to open that head.")
    return fig, summary, "", True


def _to_query(prompt, token, words, scale, run):
    if not run or prompt is None:
        return None
    q: dict[str, Any] = {"prompt": prompt}
    if token not in (None, ALL):
        q["token"] = token
    if "1" in (words or []):
        q["words"] = 1
    if scale and scale != "shared":
        q["scale"] = scale
    return q


sync_url("heads-url", [("heads-prompt", "value"), ("heads-token", "value"), ("heads-words", "value"),
                       ("heads-scale", "value")], ("heads-run", "data"), _to_query)


def head_href(run_id: str, prompt: int, layer: int, head: int, token: int | None, words: bool) -> str:
    """The token view of one head (the run page), at the same prompt, query token and word merging."""
    q: dict[str, Any] = {"prompt": prompt, "layer": layer, "head": head, "token": 0 if token in (None, ALL) else token}
    if words:
        q["words"] = 1
    return f"/runs/{run_id}?" + urlencode(q)


@callback(Output("heads-go", "href"), Input("heads-grid", "clickData"), State("heads-run-id", "data"),
          State("heads-run", "data"), State("heads-prompt", "value"), State("heads-token", "value"),
          State("heads-words", "value"), prevent_initial_call=True)
def open_head(click, run_id, run, prompt, token, words):
    """A click anywhere in a cell opens that head in the token view."""
    try:
        pt = click["points"][0]
        cell = figures_heads.cell_of(pt["x"], pt["y"], run["n_layers"], run["n_heads"])
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update
    if cell is None:
        return no_update
    return head_href(run_id, prompt or 0, cell[0], cell[1], token, "1" in (words or []))
