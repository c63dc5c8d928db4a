"""The one "wait for the run, then render" piece of the view pages, and the one URL mirror.

Every view page polls its run with :func:`poll_interval` and calls :func:`wait_for_run` in the poll callback:
while the run is queued or running it shows the progress bar, when it failed, was cancelled or is unknown it
says so and stops polling, when Redis is away it says so and keeps polling, and once the run is done it calls
the page's loader once and stops. :func:`sync_url` registers the callback that mirrors a page's view into its
URL query string (write only: the page's layout reads the query on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from dash import Input, Output, State, callback, dcc, no_update

from app import state
from app.components import alert, progress_bar

POLL_MS = 800
"""How often a waiting page asks for its run's status."""


def poll_interval(prefix: str) -> dcc.Interval:
    """The page's poll timer, ``{prefix}-poll``; :func:`wait_for_run` says when to disable it."""
    return dcc.Interval(id=f"{prefix}-poll", interval=POLL_MS, n_intervals=0)


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


def wait_for_run(run_id: str, load: Callable[[str], Any]) -> Gate:
    """Check the run once; when it is done, ``load(run_id)`` gives the page's data (see :class:`Gate`)."""
    try:
        m = state.run_status(run_id)
        if m is None:
            return Gate(None, True, alert(f"No run with id {run_id}."))
        if m["status"] in ("queued", "running"):
            return Gate(no_update, False, progress_bar(m["progress"], m["stage"], m["status"]), m)
        if m["status"] != "done":
            return Gate(None, True, alert(f"The run {m['status']}: {m.get('error') or 'no error message'}"), m)
        data = load(run_id)
    except state.REDIS_ERRORS:
        return Gate(no_update, False, alert(state.REDIS_DOWN, "warn"))
    except state.NotReady as exc:  # arrays evicted: the run is recomputing
        return Gate(no_update, False, alert(str(exc), "info"))
    except (state.ViewError, LookupError) as exc:
        return Gate(None, True, alert(str(exc).strip("'\""), "warn"))
    return Gate(data, True, "", m)


def sync_url(url_id: str, inputs: Sequence[tuple[str, str]], ready: tuple[str, str],
             to_query: Callable[..., dict[str, Any] | None], safe: str = "", prevent_initial_call: bool = True) -> None:
    """Register the callback that writes ``?`` + the view's query into ``url_id``'s search whenever one of
    ``inputs`` changes. ``to_query(*input_values, ready_value)`` returns the query, or None to leave the URL."""

    @callback(Output(url_id, "search"), *[Input(c, p) for c, p in inputs], State(*ready),
              prevent_initial_call=prevent_initial_call)
    def _sync(*values: Any) -> Any:
        q = to_query(*values)
        return no_update if q is None else "?" + urlencode(q, safe=safe)
