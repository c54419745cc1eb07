"""`bots serve`: the HTTP API plus every platform adapter whose credentials are configured."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from bots.adapters.base import Adapter
from bots.adapters.http_api import create_http_app
from bots.app import App

log = logging.getLogger(__name__)


def configured_adapters(app: App) -> list[Adapter]:
    """Adapters whose tokens are set (env, .env or bots.toml)."""
    adapters: list[Adapter] = []
    if app.settings.discord.token:
        from bots.adapters.discord_bot import DiscordAdapter

        adapters.append(DiscordAdapter(app))
    return adapters


AdapterFactory = Callable[[App], list[Adapter]]


async def serve(app: App, *, ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT: start everything, then stop gracefully within the grace bound."""
    settings = app.settings
    await app.start()
    web_app = create_http_app(app)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.server.port
    app.adapters["http"] = f"http://{settings.server.host}:{port}"
    log.info("serving the API on http://%s:%s", settings.server.host, port)
    adapters = configured_adapters(app)
    for adapter in adapters:
        await adapter.start()
        app.adapters[adapter.name] = "connected"
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for adapter in adapters:
            try:
                await asyncio.wait_for(adapter.stop(), settings.server.shutdown_grace_s)
            except Exception:
                log.exception("stopping the %s adapter failed", adapter.name)
        await runner.cleanup()
        await app.close()
