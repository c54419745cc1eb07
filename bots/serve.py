"""`bots serve`: the HTTP API plus every platform adapter whose credentials are configured."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

from bots.adapters.base import Adapter
from bots.adapters.http.api import create_http_app
from bots.model_reload import SettingsSource, watch_model_setting
from bots.runtime import Runtime

log = logging.getLogger(__name__)

# Exit statuses besides 0: a service manager restarts the bot on either.
EXIT_ENGINE_FAILED = 3
EXIT_SHUTDOWN_STUCK = 4
# After the grace period, each remaining shutdown step gets this long.
SHUTDOWN_STEP_S = 5.0
# A shutdown still running this long after the grace period ends the process regardless.
SHUTDOWN_HARD_LIMIT_S = 30.0
IDLE_POLL_S = 0.05


def configured_adapters(app: Runtime) -> list[Adapter]:
    """Adapters whose tokens are set (env, .env or bots.toml)."""
    adapters: list[Adapter] = []
    settings = app.settings
    if settings.discord.token:
        from bots.adapters.discord.bot import DiscordAdapter

        if settings.database_url or settings.discord.shard_count > 1:
            from bots.adapters.discord.shards import ShardedDiscord

            def shard(
                connections: dict[str, str], shard: tuple[int, int], grace: float | None
            ) -> DiscordAdapter:
                return DiscordAdapter(app.service, connections, shard=shard, stop_grace_s=grace)

            adapters.append(ShardedDiscord(app.service, app.adapters, shard))
        else:
            adapters.append(DiscordAdapter(app.service, app.adapters))
    if app.settings.slack.bot_token:
        from bots.adapters.slack.app import SlackAdapter

        adapters.append(SlackAdapter(app.service, app.adapters))
    return adapters


AdapterFactory = Callable[[Runtime], list[Adapter]]


async def serve(
    app: Runtime,
    *,
    ready: Callable[[int], None] | None = None,
    settings_source: SettingsSource | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully; the exit status.

    0 after a signal; EXIT_ENGINE_FAILED when the model cannot be brought back, so that a
    service manager restarts the whole bot. With `settings_source`, a save of the settings
    file that names another model switches to it live.
    """
    settings = app.settings
    await app.start()
    reloader = watch_model_setting(app, settings_source) if settings_source else None
    web_app = create_http_app(app)
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=SHUTDOWN_STEP_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.server.port
    app.adapters["http"] = f"http://{settings.server.host}:{port}"
    log.info("serving the API on http://%s:%s", settings.server.host, port)
    adapters = configured_adapters(app)
    exit_status = 0
    try:
        for adapter in adapters:
            await adapter.start()
            # An adapter that says more (a Discord instance standing by) keeps its word.
            if app.adapters.get(adapter.name) in (None, "connecting"):
                app.adapters[adapter.name] = "connected"
        if ready is not None:
            ready(port)
        exit_status = await _until_stopped(app)
    finally:
        if reloader is not None:
            await asyncio.to_thread(reloader.watcher.stop)
        await shutdown(app, adapters, runner)
    return exit_status


async def _until_stopped(app: Runtime) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits: list[asyncio.Task[object]] = [
        asyncio.create_task(stop.wait()),
        asyncio.create_task(app.engine.wait_failed()),
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    for task in done:
        reason = task.result()
        if isinstance(reason, str):
            log.critical("exiting: %s", reason)
            return EXIT_ENGINE_FAILED
    return 0


async def shutdown(app: Runtime, adapters: list[Adapter], runner: web.AppRunner) -> None:
    """Stop taking work, let replies finish within the grace period, cut off the rest, flush.

    New messages are refused at once (adapters tell the user, HTTP answers 503); replies under
    way get `server.shutdown_grace_s`; the adapters end what is left with a note saying so, and
    HTTP streams end with an error event. Then the store is flushed and closed. The whole takes
    at most the grace period plus a few SHUTDOWN_STEP_S, and never more than
    SHUTDOWN_HARD_LIMIT_S past the grace period.
    """
    grace = app.settings.server.shutdown_grace_s
    guard = threading.Timer(grace + SHUTDOWN_HARD_LIMIT_S, _exit_stuck)
    guard.daemon = True
    guard.start()
    try:
        app.service.drain()
        log.info(
            "shutting down: %d replies in flight, up to %gs to finish", app.service.in_flight, grace
        )
        await asyncio.gather(
            _wait_idle(app, grace),
            *(_bounded(a.stop(), grace + SHUTDOWN_STEP_S, f"stopping {a.name}") for a in adapters),
        )
        # What still runs (HTTP replies) ends with an error saying the bot is shutting down.
        await _bounded(app.engine.close(), SHUTDOWN_STEP_S, "stopping the engine")
        await _wait_idle(app, SHUTDOWN_STEP_S)
        await _bounded(runner.cleanup(), SHUTDOWN_STEP_S, "closing the HTTP server")
        await app.close()
        log.info("stopped")
    finally:
        guard.cancel()


async def _wait_idle(app: Runtime, limit_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while app.service.in_flight > 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(IDLE_POLL_S)


async def _bounded(step: Awaitable[None], limit_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, limit_s)
    except TimeoutError:
        log.error("%s took over %gs; going on", what, limit_s)
    except Exception:
        log.exception("%s failed", what)


def _exit_stuck() -> None:
    log.critical("shutdown took too long; exiting now")
    os._exit(EXIT_SHUTDOWN_STUCK)
