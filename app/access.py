"""Optional access token (``ATLAS_ACCESS_TOKEN``): when the operator sets one, every page, API call,
Dash callback and upload must carry it, as ``Authorization: Bearer <token>`` or as the cookie that
opening any page with ``?token=<token>`` sets (the link is then redirected without the token)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request

COOKIE = "atlas_access"


def _cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, so the token itself is not stored in browsers."""
    return hmac.new(token.encode(), b"attention-atlas access cookie", hashlib.sha256).hexdigest()


def _matches(supplied: str | None, expected: str) -> bool:
    return bool(supplied) and hmac.compare_digest(supplied.encode(), expected.encode())


def refusal(api: bool) -> Response | tuple:
    message = ("this Attention Atlas needs an access token: send the header `Authorization: Bearer <token>`, "
               "or open a page once as /?token=<token> (ask the operator for it)")
    if api:
        return jsonify({"error": message, "code": 401}), 401
    page = (f"<!doctype html><title>Access token needed</title><h1>Access token needed</h1><p>{message}</p>"
            "<form method=get action=/><input name=token type=password aria-label=token autofocus> "
            "<button>Open</button></form>")
    return Response(page, status=401, mimetype="text/html")


def install(server: Flask, token: str) -> None:
    """Refuse (401) every request without ``token``; nothing to do when ``token`` is empty."""
    if not token:
        return
    cookie = _cookie_value(token)

    @server.before_request
    def _guard():  # noqa: ANN202
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
        if _matches(bearer, token) or _matches(request.cookies.get(COOKIE), cookie):
            return None
        if _matches(request.args.get("token"), token):
            if request.method != "GET" or request.path.startswith("/api/"):
                return None
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            resp = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=303)
            resp.set_cookie(COOKIE, cookie, httponly=True, samesite="Lax", secure=request.is_secure,
                            max_age=30 * 24 * 3600)
            return resp
        api = request.path.startswith(("/api/", "/_dash-")) or request.method != "GET"
        return refusal(api)
