"""The one "wait for the run, then render" piece of the view pages, and the one URL mirror.

Every view page polls its run with :func:`poll_interval` and calls :func:`wait_for_run` in the poll callback:
while the run is queued or running it shows the progress bar, when it failed, was cancelled or is unknown it
says so and stops polling, when Redis is away it says so and keeps polling, and once the run is done it calls
the page's loader once and stops. Pages over two runs (the compare pages) call :func:`wait_for_runs`: the same
gate for each run, its status labelled with the run's side ("Run A"), and the data once every run is ready. :func:`sync_url` registers the callback that mirrors a page's view into its
URL query string (write only: the page's layout reads the query on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from dash import MATCH, Input, Output, State, callback, clientside_callback, dcc, html, no_update

from app import state
from app.components import alert, progress_bar
from backend import jobs
from backend.vocab import ANALYSES

ANALYSIS_LABEL = {a.name: a.label for a in ANALYSES}

POLL_MS = 800
"""How often a waiting page asks for its run's status."""


def poll_interval(prefix: str, ready: "Gate | None" = None) -> dcc.Interval | html.Div:
    """The page's poll timer, ``{prefix}-poll``; :func:`wait_for_run` says when to disable it. With a ``ready``
    gate (from :func:`gate_at_layout`) there is nothing to wait for: no timer, so the poll callback never fires
    and the page's views draw in the first round of callbacks."""
    if ready is not None:
        return html.Div(id=f"{prefix}-poll-done", hidden=True)
    return dcc.Interval(id=f"{prefix}-poll", interval=POLL_MS, n_intervals=0)


def gate_at_layout(run_id: str | None, load: Callable[[str], Any], analysis: str | None = None) -> "Gate | None":
    """The gate when the page's layout is built: a ready :class:`Gate` when the run is already done (a cached
    page, its stores and pickers filled in the layout, one round trip less before the figures), else None
    (the page polls as usual)."""
    if not run_id:
        return None
    gate = wait_for_run(run_id, load, analysis)
    return gate if gate.ready else None


@dataclass(frozen=True)
class Gate:
    """Where a page's run stands. ``data``: the loader's result once ready, ``None`` when the page stops without
    data (unknown, failed or cancelled run, unusable for this view), ``no_update`` while it waits."""

    data: Any
    stop: bool
    """Disable the poll timer (ready, or failed for good)."""
    status: Any
    """The status line: a progress bar, an alert, or "" once ready."""
    manifest: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return self.stop and self.data is not None

    @property
    def blank(self) -> Any:
        """The value for the page's other outputs when not ready: cleared once stopped, untouched while waiting."""
        return "" if self.stop else no_update


def _side_id(base: str, side: str) -> str:
    """A DOM id unique per side of a compare page (``progress-a``), the plain id on one-run pages."""
    return f"{base}-{side.lower()}" if side else base


def extension_offer(run_id: str, analysis: str, ext: dict[str, Any] | None, side: str = "") -> html.Div:
    """Instead of a dead end: this run lacks the view's analysis; a button adds it to the same run (same URL)."""
    label = ANALYSIS_LABEL.get(analysis, analysis)
    failed = ext and ext.get("status") == "failed" and analysis in ext.get("analyses", [])
    return html.Div(className="extend-offer", id=_side_id("extend-offer", side), children=[
        alert(f"This run was submitted without the “{label}” analysis this view draws."
              + (f" The last attempt to add it failed: {ext.get('error')}" if failed else ""), "info"),
        html.Button(f"Compute {label.split(' (')[0].lower()} now", className="btn",
                    id={"type": "extend-run", "run": run_id, "analysis": analysis}, n_clicks=0),
        html.Span(" The run keeps its id and this page its URL; the view appears when the analysis is done.",
                  className="muted"),
        html.Div(id={"type": "extend-message", "run": run_id, "analysis": analysis}),
        dcc.Store(id={"type": "extend-queued", "run": run_id, "analysis": analysis}),
    ])


@callback(Output({"type": "extend-message", "run": MATCH, "analysis": MATCH}, "children"),
          Output({"type": "extend-queued", "run": MATCH, "analysis": MATCH}, "data"),
          Input({"type": "extend-run", "run": MATCH, "analysis": MATCH}, "n_clicks"), prevent_initial_call=True)
def _extend(n_clicks: int) -> Any:
    """The offer's button: queue the extension, then the page reloads (same URL) to follow its progress."""
    from dash import ctx

    if not n_clicks:
        return no_update, no_update
    run_id, analysis = ctx.triggered_id["run"], ctx.triggered_id["analysis"]
    try:
        jobs.extend(state.cache(), state.settings(), run_id, [analysis], client="browser")
    except state.REDIS_ERRORS:
        return alert(state.REDIS_DOWN, "warn"), no_update
    except (ValueError, LookupError, jobs.RateLimited) as exc:
        return alert(str(exc), "warn"), no_update
    return alert("Queued; the progress shows here in a moment…", "info"), True


# The offer stops the page's poll (so it is drawn once, not redrawn every poll); once the extension is queued the
# page reloads at the same URL, and its poll shows the extension's progress bar, then the view.
clientside_callback(
    "function(queued) { if (queued) { window.location.reload(); } return window.dash_clientside.no_update; }",
    Output({"type": "extend-queued", "run": MATCH, "analysis": MATCH}, "clear_data"),
    Input({"type": "extend-queued", "run": MATCH, "analysis": MATCH}, "data"), prevent_initial_call=True,
)


def wait_for_run(run_id: str, load: Callable[[str], Any], analysis: str | None = None, side: str = "") -> Gate:
    """Check the run once; when it is done, ``load(run_id)`` gives the page's data (see :class:`Gate`).
    With ``analysis``: a done run without it gets :func:`extension_offer` (polling stops: the offer is drawn
    once; its button reloads the page once the extension is queued), then the extension's progress bar, then
    the view. With ``side`` (``"A"``): the status is labelled "Run A" and its
    ids carry the side, so that two gates can share a page."""
    gate = _check(run_id, load, analysis, side)
    if side and gate.status != "":
        gate = Gate(gate.data, gate.stop, html.Div(className="gate-side", id=_side_id("gate", side), children=[
            html.Span(f"Run {side}", className="gate-side-label"), gate.status]), gate.manifest)
    return gate


def wait_for_runs(sides: Sequence[tuple[str, str]], load: Callable[[str], Any], analysis: str | None = None) -> Gate:
    """The gate of a page over several runs: ``sides`` = ``[("A", run_id), ("B", run_id)]``, each checked by
    :func:`wait_for_run`. Ready (``data`` = the loaders' results in order) once every run is; stopped without
    data as soon as one run cannot be shown; otherwise waiting, with the status of each run not yet ready."""
    gates = [wait_for_run(run_id, load, analysis, side) for side, run_id in sides]
    if all(g.ready for g in gates):
        return Gate(tuple(g.data for g in gates), True, "")
    status = html.Div(className="gate-sides", children=[g.status for g in gates if g.status != ""])
    failed = any(g.stop and g.data is None for g in gates)
    return Gate(None if failed else no_update, failed, status)


def pair_poll(a: str | None, b: str | None, load: Callable[[str], Any], analysis: str | None,
              picked: bool) -> tuple[Any, bool, Any]:
    """The poll of a page over run A and run B: (the pair's data ``{"a", "b"}`` or None/no_update, stop polling,
    status). ``picked``: a run was just chosen, so the old pair's figures are cleared while the new pair waits."""
    if not a or not b:
        return None, True, html.P("Choose run A and run B.", className="muted")
    gate = wait_for_runs([("A", a), ("B", b)], load, analysis=analysis)
    if gate.ready:
        return {"a": gate.data[0], "b": gate.data[1]}, True, ""
    return (None if picked and gate.data is no_update else gate.data), gate.stop, gate.status


def _check(run_id: str, load: Callable[[str], Any], analysis: str | None, side: str) -> Gate:
    bar = _side_id("progress", side)
    try:
        m = state.run_status(run_id)
        if m is None:
            return Gate(None, True, alert(f"No run with id {run_id}."))
        if m["status"] in ("queued", "running"):
            starting = jobs.start_message(jobs.starting_workers(state.cache())) if m["status"] == "queued" else ""
            return Gate(no_update, False, progress_bar(m["progress"], starting or m["stage"], m["status"], bar), m)
        if m["status"] != "done":  # failed or cancelled: the bar stays at the progress it had reached
            return Gate(None, True, html.Div([
                progress_bar(m.get("progress", 0), m["status"], m["status"], bar),
                alert(f"The run {'was cancelled' if m['status'] == 'cancelled' else m['status']}: "
                      f"{m.get('error') or 'no error message'}"),
            ]), m)
        if analysis and analysis not in jobs.run_analyses(m):
            ext = jobs.extension_status(state.cache(), run_id, m)
            if ext and ext.get("status") in ("queued", "running") and analysis in ext.get("analyses", []):
                stage = f"adding {ANALYSIS_LABEL.get(analysis, analysis).lower()}: {ext.get('stage', '')}"
                return Gate(no_update, False, progress_bar(ext.get("progress", 0), stage, ext["status"], bar), m)
            return Gate(None, True, extension_offer(run_id, analysis, ext, side), m)
        data = load(run_id)
    except state.REDIS_ERRORS:
        return Gate(no_update, False, alert(state.REDIS_DOWN, "warn"))
    except state.NotReady as exc:  # arrays evicted: the run is recomputing
        return Gate(no_update, False, alert(str(exc), "info"))
    except (state.ViewError, LookupError) as exc:
        return Gate(None, True, alert(str(exc).strip("'\""), "warn"))
    return Gate(data, True, "", m)


def pair_at_layout(a: str | None, b: str | None, load: Callable[[str], Any],
                   analysis: str | None) -> tuple[Any, bool, Any]:
    """:func:`pair_poll` when a two-run page's layout is built: (the pair's data or None, stop polling, status). A
    cached pair's page holds its figures in the layout; its poll and render callbacks wait for a change."""
    data, stop, status = pair_poll(a, b, load, analysis, picked=False)
    return (None if data is no_update else data), stop, status


def pair_poll_interval(prefix: str, stop: bool) -> dcc.Interval:
    """The poll timer of a two-run page, ``{prefix}-poll``; disabled from the start when there is nothing to wait
    for (it stays in the layout: picking another run restarts it)."""
    return dcc.Interval(id=f"{prefix}-poll", interval=POLL_MS, n_intervals=0, disabled=stop)


def sync_url(url_id: str, inputs: Sequence[tuple[str, str]], ready: tuple[str, str],
             to_query: Callable[..., dict[str, Any] | None], safe: str = "", prevent_initial_call: bool = True) -> None:
    """Register the callback that writes ``?`` + the view's query into ``url_id``'s search whenever one of
    ``inputs`` changes. ``to_query(*input_values, ready_value)`` returns the query (empty: no ``?``), or None to
    leave the URL."""

    @callback(Output(url_id, "search"), *[Input(c, p) for c, p in inputs], State(*ready),
              prevent_initial_call=prevent_initial_call)
    def _sync(*values: Any) -> Any:
        q = to_query(*values)
        if q is None:
            return no_update
        return "?" + urlencode(q, safe=safe) if q else ""
