"""Which names the HTTP server answers to when no API token is set: its own, never a stranger's.

A web page can make a browser send requests to a server on the user's machine by pointing a
name it controls at 127.0.0.1 (DNS rebinding); the browser then treats the answers as the
page's own and lets it read them. Such a request still carries the page's name in its `Host`
header, so without a token every endpoint (API, status, metrics, health, workbench) answers only
requests addressed to the server itself: an IP address (a rebinding page always uses a name),
`localhost` and names under `.localhost`, the configured `server.host`, and the names listed in
`server.allowed_hosts` (".example.com" covers the name and every name under it). With a token
set, the token is the check, and any name is answered as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from bots.settings import ServerSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def own_name(host: str, server: ServerSettings) -> bool:
    """Whether `host` (a Host header's name, without the port) names this server."""
    name = host.strip("[]").rstrip(".").lower()
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost") or name == server.host.lower():
        return True
    for allowed in server.allowed_hosts:
        allowed = allowed.rstrip(".").lower()
        if name == allowed.lstrip(".") or (allowed.startswith(".") and name.endswith(allowed)):
            return True
    return False


def refusal(host: str) -> str:
    """Why a request addressed to `host` was refused, and what to do about it."""
    return (
        f"this server does not answer to the host name {host!r} without an API token (a web "
        "page could reach it through DNS rebinding): use localhost or the server's address, "
        "add the name to server.allowed_hosts (BOTS_SERVER_ALLOWED_HOSTS), or set an API "
        "token (BOTS_API_TOKEN)"
    )


def host_guard(server: ServerSettings) -> Middleware:
    """The middleware that refuses (403) requests naming another host while no token is set."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if server.api_token or "Host" not in request.headers:
            # No browser leaves Host out: a client that does is not a rebinding page.
            return await handler(request)
        try:
            host = request.url.host or ""
        except ValueError:  # a Host header yarl cannot parse
            host = ""
        if own_name(host, server):
            return await handler(request)
        message = refusal(host or request.headers["Host"])
        if request.path.startswith("/v1/"):
            body = {"error": {"message": message, "type": "permission_error", "code": 403}}
            return web.json_response(body, status=403)
        return web.Response(status=403, text=message + "\n")

    return guard
