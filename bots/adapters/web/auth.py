"""Who may open the workbench: the API token (as a bearer header or a sign-in cookie); without a
token, anyone whose request names the server itself (`bots.adapters.http.hosts`).

The cookie holds an HMAC of the token, not the token: it opens the workbench only, never the API.
It is HttpOnly and SameSite=Strict, and state-changing requests must be JSON, so another site
cannot act through a signed-in browser; the host check in front of every endpoint keeps a
DNS-rebinding site out when no token is set.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

SESSION_COOKIE = "bots_workbench"
SESSION_CONTEXT = b"bots workbench session"


def session_value(token: str) -> str:
    """The cookie value that proves the browser was given `token`."""
    return hmac.new(token.encode(), SESSION_CONTEXT, hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def authorized(request: web.Request, token: str) -> bool:
    """No token set, or a matching bearer header, or the sign-in cookie."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and token_matches(header[len("Bearer ") :], token):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie, session_value(token))


def set_session(response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, session_value(token), httponly=True, samesite="Strict", path="/"
    )
