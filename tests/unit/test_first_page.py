"""The layout a page fetches holds that page already (no routing round trip), only for a same-origin page of this app;
otherwise it is Dash's empty page container and the routing callback renders the page."""

from __future__ import annotations

import json

import pytest

from app import first_page


@pytest.fixture(scope="module")
def client():
    from app.main import create_app

    return create_app().server.test_client()


def _find(node, wanted: str):
    """The component with id ``wanted`` in a layout's JSON."""
    if isinstance(node, dict):
        if node.get("props", {}).get("id") == wanted:
            return node
        for v in node.get("props", {}).values():
            found = _find(v, wanted)
            if found is not None:
                return found
    elif isinstance(node, list):
        for v in node:
            found = _find(v, wanted)
            if found is not None:
                return found
    return None


def _layout(client, referrer: str | None) -> dict:
    headers = {"Referer": referrer} if referrer else {}
    resp = client.get("/_dash-layout", headers=headers)
    assert resp.status_code == 200
    return json.loads(resp.data)


def test_the_landing_page_is_in_its_layout(client) -> None:
    layout = _layout(client, "http://localhost/?model=all-MiniLM-L6-v2")
    location = _find(layout, first_page.ID_LOCATION)["props"]
    assert location["pathname"] == "/" and location["search"] == "?model=all-MiniLM-L6-v2"
    content = _find(layout, first_page.ID_CONTENT)["props"]["children"]
    assert _find(content, "new-model") is not None  # the new-analysis form
    assert _find(layout, first_page.ID_STORE)["props"]["data"] == {"title": "New analysis · Attention Atlas"}
    assert _find(layout, first_page.ID_DUMMY) is not None


@pytest.mark.parametrize("referrer", [None, "http://elsewhere.example/", "http://localhost/no/such/page",
                                      "http://localhost/runs/x/nope"])
def test_otherwise_the_routing_callback_renders_the_page(client, referrer) -> None:
    layout = _layout(client, referrer)
    location = _find(layout, first_page.ID_LOCATION)["props"]
    assert "pathname" not in location and "search" not in location  # it reports the URL: the routing callback runs
    assert _find(layout, first_page.ID_CONTENT)["props"].get("children") is None


def test_pages_ask_for_their_full_url_as_referrer(client) -> None:
    assert client.get("/").headers["Referrer-Policy"] == first_page.REFERRER_POLICY == "same-origin"
