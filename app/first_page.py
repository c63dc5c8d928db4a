"""The first page's content inside the app's layout: a page load makes no routing round trip.

With Dash pages, the layout the browser fetches (``/_dash-layout``) holds an empty page container; once it is drawn,
its ``dcc.Location`` reports the URL and Dash's routing callback answers with the page (one more request, then a
second render). Here :func:`container` renders the page of the URL the layout was fetched from (the request's
``Referer``, a same-origin page of this app: :data:`REFERRER_POLICY` makes the browser send its full URL) into the
container, and gives the ``dcc.Location`` that URL's path and query string, so it reports nothing on mount and the
routing callback does not run. Navigation inside the app (links, back and forward) still goes through the routing
callback, which renders the same page layouts.

Without a usable ``Referer`` (another origin, a path of no page, a page whose layout fails) the container is Dash's
own empty one and the routing callback renders the page as before.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import dash
from dash import _pages, dcc, html
from dash.dash import _ID_CONTENT, _ID_DUMMY, _ID_LOCATION, _ID_STORE
from flask import has_request_context, request

from app import not_found
from app.components import store

log = logging.getLogger(__name__)

# Dash's ids for the page container: the routing callback and the title callback use them
ID_LOCATION, ID_CONTENT, ID_STORE, ID_DUMMY = _ID_LOCATION, _ID_CONTENT, _ID_STORE, _ID_DUMMY
REFERRER_POLICY = "same-origin"
"""Sent with every response: same-origin requests carry the page's full URL (the default policy does too, but a
page-level policy keeps it so under browsers whose default differs); other origins get none."""


def container() -> html.Div:
    """Dash's page container, holding the page of the URL this layout is fetched for when that page is known."""
    first = _first_page()
    url, content, title = {}, None, None
    if first is not None:
        path, search, content, title = first
        url = {"pathname": path, "search": search}  # given its URL, the Location reports nothing on mount
    return html.Div([dcc.Location(id=ID_LOCATION, refresh="callback-nav", **url),
                     html.Div(content, id=ID_CONTENT, disable_n_clicks=True),
                     store(ID_STORE, None if first is None else {"title": title}),
                     html.Div(id=ID_DUMMY, disable_n_clicks=True)])


def _first_page() -> tuple[str, str, object, str] | None:
    """(path, search, layout, title) of the page the layout request comes from, as Dash's routing callback would
    render it; None when there is no such page to render here."""
    if not has_request_context() or not request.path.endswith("_dash-layout") or not request.referrer:
        return None
    url = urlsplit(request.referrer)
    if f"{url.scheme}://{url.netloc}" != request.host_url.rstrip("/"):
        return None
    app = dash.get_app()
    prefix = app.config.requests_pathname_prefix or "/"
    if not (url.path + "/").startswith(prefix):
        return None
    relative = app.strip_relative_path(url.path) or ""
    if not_found.unknown_path("/" + relative):
        return None
    page, variables = _pages._path_to_page(relative)
    search = f"?{url.query}" if url.query else ""
    try:
        layout = page.get("layout", "")
        if callable(layout):
            layout = layout(**{**(variables or {}), **_pages._parse_query_string(search)})
        title = page["title"](**(variables or {})) if callable(page["title"]) else page["title"]
    except Exception:  # noqa: BLE001 - the routing callback renders it again, with its own error handling
        log.exception("rendering %s into the layout failed; the routing callback renders it", url.path)
        return None
    return url.path, search, layout, title


def set_referrer_policy(resp):
    """An ``after_request`` hook: :data:`REFERRER_POLICY` on every response."""
    resp.headers.setdefault("Referrer-Policy", REFERRER_POLICY)
    return resp
