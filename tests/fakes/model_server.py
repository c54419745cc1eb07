"""A loopback OpenAI-compatible model server (`POST /v1/chat/completions`, streamed as SSE)
that answers with scripted words at a set pace, for bots processes with `model.endpoint`.

It stands where llama-server stands in a deployment of several instances; the replies are
scripted so that tests of the bot tier (which instance answers, what the store holds) are exact
and a reply can be made slow enough to kill its instance mid-way. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class ModelServer:
    """`words` per reply, one every `delay_s`; each reply starts with `answer-N`."""

    words: int = 4
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        number = len(self.requests)
        words = [f"answer-{number}"] + [f" w{i}" for i in range(1, self.words)]
        if body.get("max_tokens", 100) <= 1:  # the health probe: one token
            words = words[:1]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in words:
            event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(self.delay_s)
        usage = {"prompt_tokens": 10, "completion_tokens": len(words)}
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        await response.write(f"data: {json.dumps(done)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def prompts(self) -> list[str]:
        """Every request's messages joined as one text (to find history in a prompt)."""
        return ["\n".join(m["content"] for m in r["messages"]) for r in self.requests]
