"""The remote engine: stream replies from OpenAI-compatible endpoints (llama-server, vLLM, ...).

For when one machine is not enough: the bots run here, the model runs on one or more servers.
Requests go to `POST /v1/chat/completions` with `stream: true`; several endpoints (comma
separated) are used in turn, and a failed attempt is retried on the next one. Only failures before
the first token are retried (connection errors, 429 and 5xx answers): after that, text has
reached the user and a retry would repeat it.

The same contract as the local engines: a bounded queue that answers EngineBusy at once, the
request's timeout, and closing the stream closes the HTTP response, which makes llama-server and
vLLM stop generating for it. A request's LoRA adapter is passed the way each server wants it
(remote_lora.py).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp

from bots.engine.base import (
    EngineBusy,
    EngineError,
    EngineStatus,
    EngineTimeout,
    GenerationRequest,
    Piece,
    Usage,
)
from bots.engine.remote_lora import ServerAdapters, adapter_fields, fetch_server_adapters

DEFAULT_CONTEXT_SIZE = 8192
DEFAULT_PARALLEL = 8
DEFAULT_QUEUE_SIZE = 32
RETRY_BASE_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0
# Without the server's tokenizer, count high: the prompt builder uses the count to stay inside
# the context window, where too many tokens fail a request and too few merely waste some room.
# BPE vocabularies of chat models average 3.5 to 4.5 bytes per token on English text.
BYTES_PER_TOKEN_ESTIMATE = 3.0
ERROR_BODY_LIMIT = 500
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

FinishReason = Literal["stop", "length", "cancelled"]


class _Retryable(Exception):
    """An attempt failed before any text arrived; another attempt may succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Endpoint:
    url: str  # the full chat completions URL


def chat_completions_url(endpoint: str) -> str:
    """`http://host:port`, `.../v1` or the full URL, as the chat completions URL."""
    base = endpoint.strip().rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


class RemoteEngine:
    """An `Engine` that streams from OpenAI-compatible servers."""

    def __init__(
        self,
        endpoint: str,
        *,
        model: str = "",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        parallel: int = DEFAULT_PARALLEL,
        context_size: int = DEFAULT_CONTEXT_SIZE,
        tokenizer_path: Path | None = None,
    ) -> None:
        urls = [chat_completions_url(e) for e in endpoint.split(",") if e.strip()]
        if not urls:
            raise ValueError("model.endpoint is empty: give a URL such as http://127.0.0.1:8080")
        self._endpoints = [_Endpoint(u) for u in urls]
        self._model = model
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._retries = max(0, retries)
        self._queue_size = queue_size
        self._parallel = parallel
        self._context_size = context_size
        self._tokenizer_path = tokenizer_path
        self._tokenizer: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(parallel)
        self._waiting = 0
        self._active = 0
        self._next = 0
        self._last_error = ""
        # What each endpoint says of its adapters, asked before its first request.
        self._server_adapters: dict[str, ServerAdapters] = {}

    @property
    def context_size(self) -> int:
        return self._context_size

    async def start(self) -> None:
        """Open the HTTP session (and load the vocabulary-only tokenizer, when given)."""
        if self._tokenizer_path is not None and self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(self._load_tokenizer, self._tokenizer_path)
        if self._session is None:
            # The per-attempt limit is on silence (connecting, or between two chunks), not on
            # the whole reply: the request's own timeout bounds that.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from bots.engine.llama_native import NativeModel

        return NativeModel(path, vocab_only=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._tokenizer is not None:
            self._tokenizer.close()
            self._tokenizer = None

    def count_tokens(self, text: str) -> int:
        """Exact with a local tokenizer; otherwise a deliberate over-estimate (see above)."""
        if self._tokenizer is not None:
            return len(self._tokenizer.tokenize(text))
        return math.ceil(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE)

    def status(self) -> EngineStatus:
        names = ", ".join(e.url for e in self._endpoints)
        return EngineStatus(
            model=self._model or names,
            queue_depth=self._waiting,
            queue_capacity=self._queue_size,
            active=self._active,
            healthy=self._session is not None and not self._last_error,
            detail=f"remote: {names}"
            + (f"; last error: {self._last_error}" if self._last_error else ""),
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the reply; closing the iterator closes the HTTP stream."""
        if self._session is None:
            raise EngineError("the engine is not started")
        if self._waiting >= self._queue_size:
            raise EngineBusy()
        loop = asyncio.get_running_loop()
        submitted = loop.time()
        deadline = submitted + request.timeout_s
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise EngineTimeout(f"waited {request.timeout_s:g}s for a free slot") from None
        finally:
            self._waiting -= 1
        self._active += 1
        try:
            async for piece in self._attempts(request, submitted, deadline):
                yield piece
        finally:
            self._active -= 1
            self._slots.release()

    async def _attempts(
        self, request: GenerationRequest, submitted: float, deadline: float
    ) -> AsyncIterator[Piece]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        last: _Retryable | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                assert last is not None
                delay = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** (attempt - 1))
                delay = max(delay, last.retry_after_s or 0.0)
                if loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            endpoint = self._endpoints[self._next % len(self._endpoints)]
            self._next += 1
            try:
                async for piece in self._one_attempt(
                    endpoint, request, submitted, started, deadline
                ):
                    yield piece
                self._last_error = ""
                return
            except _Retryable as exc:
                last = exc
                self._last_error = str(exc)
        assert last is not None
        if last.retry_after_s is not None:
            raise EngineBusy(last.retry_after_s)
        raise EngineError(f"the model server failed {self._retries + 1} times: {last}")

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model or "default",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            # Not in OpenAI's API, understood by llama-server (top_k, repeat_penalty) and vLLM
            # (top_k, repetition_penalty); servers ignore the names they do not know.
            "top_k": request.top_k,
            "repeat_penalty": request.repeat_penalty,
            "repetition_penalty": request.repeat_penalty,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    async def _one_attempt(
        self,
        endpoint: _Endpoint,
        request: GenerationRequest,
        submitted: float,
        started: float,
        deadline: float,
    ) -> AsyncIterator[Piece]:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        first: float | None = None
        pieces = 0
        finish: FinishReason = "stop"
        usage: dict[str, Any] = {}
        try:
            async with asyncio.timeout_at(deadline):
                if endpoint.url not in self._server_adapters:
                    self._server_adapters[endpoint.url] = await fetch_server_adapters(
                        self._session, endpoint.url, headers
                    )
                server = self._server_adapters.get(endpoint.url)
                body = self._body(request) | adapter_fields(server, request.adapter)
                response = await self._session.post(endpoint.url, json=body, headers=headers)
        except TimeoutError:
            raise EngineTimeout(f"no reply within the request's {request.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"{endpoint.url}: {exc or type(exc).__name__}") from exc
        try:
            await self._check_status(endpoint, response)
            lines = response.content.__aiter__()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await anext(lines)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise EngineTimeout(
                        f"no complete reply within the request's {request.timeout_s:g}s timeout"
                    ) from None
                except aiohttp.ClientError as exc:
                    if first is None:
                        raise _Retryable(f"{endpoint.url}: {exc}") from exc
                    raise EngineError(f"{endpoint.url} broke off the reply: {exc}") from exc
                event = _parse_event(raw)
                if event is None:
                    continue
                if event == "[DONE]":
                    break
                if isinstance(event.get("error"), dict | str):
                    message = _error_text(event["error"])
                    if first is None:
                        raise _Retryable(f"{endpoint.url}: {message}")
                    raise EngineError(f"{endpoint.url}: {message}")
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        first = first or loop.time()
                        pieces += 1
                        yield Piece(text)
                    if choice.get("finish_reason") == "length":
                        finish = "length"
        finally:
            response.close()
        end = loop.time()
        details = usage.get("prompt_tokens_details") or {}
        yield Piece(
            "",
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or pieces),
                queue_ms=(started - submitted) * 1000,
                ttft_ms=((first or end) - started) * 1000,
                total_ms=(end - started) * 1000,
            ),
        )

    @staticmethod
    async def _check_status(endpoint: _Endpoint, response: aiohttp.ClientResponse) -> None:
        if response.status == 200:
            return
        body = (await response.text())[:ERROR_BODY_LIMIT]
        message = f"{endpoint.url} answered {response.status}: {body}"
        if response.status in RETRYABLE_STATUS:
            retry_after = response.headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            raise _Retryable(message, wait if response.status in (429, 503) else None)
        raise EngineError(message)


def _parse_event(raw: bytes) -> Any:
    """One SSE line: the JSON of a `data:` line, "[DONE]", or None for anything else."""
    line = raw.decode(errors="replace").strip()
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return data
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
