"""Links from the run page to further views of a run, filled in by the pages that provide them.

It lives outside ``app/pages`` on purpose: Dash imports page files under its own module names
(``pages.run``), so ``from app.pages import run`` in another page would import the run page a second
time (duplicate page and callbacks). A page registers its link with::

    from app.view_links import register_view
    register_view("atlas", "Head atlas", needs="metrics.induction")
"""

from __future__ import annotations

VIEW_LINKS: list[tuple[str, str]] = []
"""(url segment, label) of further views of a run, in registration order."""
VIEW_NEEDS: dict[str, str] = {}
"""url segment -> prefix of an array name the run has once the view's analysis is done."""
VIEW_ANALYSIS: dict[str, str] = {}
"""url segment -> the analysis (``backend.vocab.ANALYSES``) the view draws; a run without it is offered to compute it."""
VIEW_KINDS: dict[str, tuple[str, ...]] = {}
"""url segment -> the input kinds the view makes sense for."""


def register_view(segment: str, label: str, needs: str, analysis: str = "attention",
                  kinds: tuple[str, ...] = ("text", "image")) -> None:
    """List ``/runs/<run_id>/<segment>`` on the run page of runs of ``kinds``: a plain link when the run has an
    array starting with ``needs``, else a link marked "not computed yet" (the view offers to add ``analysis``)."""
    if (segment, label) not in VIEW_LINKS:
        VIEW_LINKS.append((segment, label))
    VIEW_NEEDS[segment] = needs
    VIEW_ANALYSIS[segment] = analysis
    VIEW_KINDS[segment] = kinds
