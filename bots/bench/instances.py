"""`bots bench instances`: messages per second through two `bots serve` instances against one,
on one PostgreSQL database and the same model server, and the lease takeover after kill -9.

The instances are real `bots serve` processes on a throwaway persona folder, each with its own
data folder; the messages go through their OpenAI-compatible HTTP API, each in a conversation
of its own (so every one is stored: history read, two turns written, the conversation locked),
spread round-robin over the instances. The takeover is the time from killing a process that
holds a lease (as a Discord shard's holder does) to this process holding it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

READY = re.compile(rb"serving the API on (http://[\d.]+:\d+)")
START_TIMEOUT_S = 60.0
PERSONA = """---
name: Bench
---
You are a helpful assistant. Answer briefly.
"""
HOLDER = """
import asyncio, sys
from bots.store.postgres import PostgresStore

async def main():
    store = PostgresStore(sys.argv[1], "bench-holder")
    await store.open()
    assert await store.try_lease(sys.argv[2]) is not None
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@dataclass(frozen=True)
class InstancesResult:
    """Messages per second with one instance on SQLite (the baseline), one and two on
    PostgreSQL, and the takeover times (s)."""

    sqlite_per_s: float
    one_per_s: float
    two_per_s: float
    messages: int
    takeovers_s: tuple[float, ...]


async def _start(
    root: Path, name: str, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    data = root / name
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "--personas",
        str(root / "personas"),
        "--knowledge",
        str(root / "knowledge"),
        "--data-dir",
        str(data),
        "serve",
        "--port",
        "0",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (match := READY.search(output)) is None:
        left = deadline - time.monotonic()
        line = await asyncio.wait_for(proc.stdout.readline(), max(0.1, left))
        if not line:
            raise RuntimeError(f"bots serve exited:\n{output.decode(errors='replace')}")
        output += line
    url = match.group(1).decode()
    # Drain the log so the pipe never fills.
    asyncio.get_running_loop().create_task(_drain(proc))
    return proc, url


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def _rate(urls: list[str], messages: int, concurrency: int, tag: str) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(messages):
        queue.put_nowait(n)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": f"Question {n}: what is {n} + 1?"}],
                "user": f"user-{n % 16}",
                "conversation": f"{tag}-{n}",
                "max_tokens": 16,
            }
            response = await client.post(
                urls[n % len(urls)] + "/v1/chat/completions", json=body, timeout=120
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code} from {response.url}: {response.text}")

    started = time.perf_counter()
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return messages / (time.perf_counter() - started)


async def _takeover(database_url: str, lease: str) -> float:
    from bots.store.postgres import PostgresStore

    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, database_url, lease, stdout=asyncio.subprocess.PIPE
    )
    store = PostgresStore(database_url, f"bench-{os.getpid()}")
    try:
        assert holder.stdout is not None
        await asyncio.wait_for(holder.stdout.readline(), START_TIMEOUT_S)
        await store.open()
        holder.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        while (held := await store.try_lease(lease)) is None:
            await asyncio.sleep(0.01)
        took = time.perf_counter() - killed
        await held.release()
        return took
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
        await store.close()


async def measure_instances(
    database_url: str, endpoint: str, *, messages: int = 200, concurrency: int = 16
) -> InstancesResult:
    """Run the benchmark (see the module docstring)."""
    env = {
        "BOTS_DATABASE_URL": database_url,
        "BOTS_MODEL_ENDPOINT": endpoint,
        "BOTS_SERVER_MAX_IN_FLIGHT_PER_CLIENT": "0",
        "BOTS_SERVER_RATE_LIMIT_REQUESTS": "0",
        "BOTS_MODEL_QUEUE_SIZE": str(max(32, concurrency * 2)),
    }
    with tempfile.TemporaryDirectory(prefix="bots-instances-") as folder:
        root = Path(folder)
        (root / "personas" / "bench").mkdir(parents=True)
        (root / "personas" / "bench" / "persona.md").write_text(PERSONA, encoding="utf-8")
        (root / "knowledge").mkdir()
        procs = []
        try:
            local = {k: v for k, v in env.items() if k != "BOTS_DATABASE_URL"}
            alone, url = await _start(root, "sqlite", local)
            procs.append(alone)
            await _rate([url], max(8, messages // 10), concurrency, "warm")
            sqlite = await _rate([url], messages, concurrency, "sqlite")
            alone.send_signal(signal.SIGTERM)
            await alone.wait()
            procs.remove(alone)
            first, url_a = await _start(root, "a", env)
            procs.append(first)
            await _rate([url_a], max(8, messages // 10), concurrency, "warm")
            one = await _rate([url_a], messages, concurrency, "one")
            second, url_b = await _start(root, "b", env)
            procs.append(second)
            two = await _rate([url_a, url_b], messages, concurrency, "two")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                await proc.wait()
    takeovers = tuple([await _takeover(database_url, f"bench-lease-{n}") for n in range(5)])
    return InstancesResult(sqlite, one, two, messages, takeovers)
