"""A request's LoRA adapter, as each kind of OpenAI-compatible server wants to be told it.

- llama-server loads adapters only at start (`--lora FILE`) and lists them at `GET
  /lora-adapters` as `{"id", "path", "scale"}`; a request names the ones it wants in `"lora":
  [{"id": N, "scale": S}]`, and a request that names none gets the start-up scales: 1.0, even
  with `--lora-init-without-apply` (llama-server of llama-cpp-python 0.3.36's vendored source).
  So every request lists every id, the unwanted at scale 0: one without an adapter gets the base
  model. The list is asked once per endpoint, before its first request.
- vLLM (`--enable-lora --lora-modules handbook@3=PATH`) has no `/lora-adapters`: the request's
  `model` is the adapter's name.

An adapter is matched to llama-server's list by path: the same path, or the same version folder
(`NAME/VERSION/adapter.gguf`) when the server machine keeps its copy elsewhere, or, for a file
named directly, the same file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import aiohttp

from bots.engine.base import Adapter, EngineError

LORA_ADAPTERS_PATH = "/lora-adapters"
VERSION_FILE = "adapter.gguf"


@dataclass(frozen=True)
class ServerAdapters:
    """What a server says of its adapters: llama-server's (id, path) list; None for a server
    that names adapters as models (vLLM)."""

    loaded: tuple[tuple[int, str], ...] | None


def server_root(chat_url: str) -> str:
    """`http://host:port` of a chat completions URL (where llama-server's own routes are)."""
    for tail in ("/v1/chat/completions", "/chat/completions"):
        if chat_url.endswith(tail):
            return chat_url[: -len(tail)]
    return chat_url.rstrip("/")


async def fetch_server_adapters(
    session: aiohttp.ClientSession, chat_url: str, headers: dict[str, str]
) -> ServerAdapters:
    """Ask the server behind `chat_url` for its adapters (aiohttp.ClientError if unreachable)."""
    async with session.get(server_root(chat_url) + LORA_ADAPTERS_PATH, headers=headers) as got:
        if got.status != 200:
            return ServerAdapters(None)
        try:
            listed = await got.json(content_type=None)
        except ValueError:
            return ServerAdapters(None)
    if not isinstance(listed, list):
        return ServerAdapters(None)
    return ServerAdapters(
        tuple(
            (int(item["id"]), str(item.get("path", "")))
            for item in listed
            if isinstance(item, dict) and isinstance(item.get("id"), int)
        )
    )


def adapter_fields(server: ServerAdapters | None, adapter: Adapter | None) -> dict[str, Any]:
    """The body fields that ask `server` for `adapter` (None: the base model); EngineError when
    a llama-server was not started with it."""
    if server is None or (server.loaded is None and adapter is None):
        return {}
    if server.loaded is None:
        assert adapter is not None
        return {"model": adapter.name}
    wanted = _match(server.loaded, adapter) if adapter is not None else None
    if adapter is not None and wanted is None:
        have = ", ".join(path for _, path in server.loaded) or "none"
        raise EngineError(
            f"llama-server has no adapter {adapter.name} ({adapter.path}); it has: {have}. "
            "Start it with --lora PATH --lora-init-without-apply"
        )
    scale = adapter.scale if adapter is not None else 0.0
    return {"lora": [{"id": n, "scale": scale if n == wanted else 0.0} for n, _ in server.loaded]}


def _match(loaded: tuple[tuple[int, str], ...], adapter: Adapter) -> int | None:
    ours = PurePath(adapter.path)
    tail = len(ours.parts[-3:]) if ours.name == VERSION_FILE else 1
    for exact in (True, False):
        for n, path in loaded:
            theirs = PurePath(path)
            if (theirs == ours) if exact else (theirs.parts[-tail:] == ours.parts[-tail:]):
                return n
    return None
