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
"""url segment -> prefix of an array name the run must have for the link to show."""


def register_view(segment: str, label: str, needs: str) -> None:
    """Show a link to ``/runs/<run_id>/<segment>`` on runs that have an array starting with ``needs``."""
    if (segment, label) not in VIEW_LINKS:
        VIEW_LINKS.append((segment, label))
    VIEW_NEEDS[segment] = needs
