"""One mapping from "no answer" to an HTTP response, for the API and the workbench alike.

A refusal keeps its status (404 unknown persona, 503 busy or shutting down, ...) and its wait as
`Retry-After`; a model that fails before the first token is a 503. The API writes the result in
OpenAI's error shape (`{"error": {"message", "type", "code"}}`), the workbench as
`{"error": message}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from bots.chat.model import ChatRefused
from bots.engine.base import EngineError

# OpenAI's error types, by refusal.
ERROR_TYPES = {
    "unknown_persona": "not_found_error",
    "busy": "server_busy",
    "rate_limited": "rate_limit_exceeded",
    "shutting_down": "server_busy",
}


@dataclass(frozen=True)
class HttpError:
    """Status, OpenAI error type, message and seconds to wait (0: no `Retry-After`)."""

    status: int
    kind: str
    message: str
    retry_after_s: int = 0

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}

    def openai(self) -> web.Response:
        """The OpenAI-style error body the API answers."""
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status}}
        return web.json_response(body, status=self.status, headers=self.headers())

    def plain(self) -> web.Response:
        """The workbench's `{"error": message}`."""
        return web.json_response(
            {"error": self.message}, status=self.status, headers=self.headers()
        )


def http_error(exc: ChatRefused | EngineError) -> HttpError:
    """Why a reply could not start, as HTTP."""
    if isinstance(exc, ChatRefused):
        wait = math.ceil(exc.retry_after_s) if exc.retry_after_s else 0
        kind = ERROR_TYPES.get(exc.kind, "invalid_request_error")
        return HttpError(exc.status, kind, exc.user_message, wait)
    return HttpError(503, "server_error", f"the model is unavailable: {exc}")
