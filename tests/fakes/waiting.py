"""Waiting for something to become true, for tests that cannot be told when it happens.

Only for positive checks: a test that must show something did NOT happen sends a good message
after the bad ones and waits for its answer (see tests/test_platform_contract.py), it never
sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_S = 10.0
POLL_S = 0.02


async def until(condition: Callable[[], T], timeout: float = WAIT_S, what: str = "") -> T:
    """Poll `condition()` until it is truthy and return its value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what or 'condition'} not met in {timeout}s"
        await asyncio.sleep(POLL_S)
    return value


def until_now(condition: Callable[[], T], timeout: float = WAIT_S, what: str = "") -> T:
    """`until` for tests without an event loop (they poll a server in another process)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what or 'condition'} not met in {timeout}s"
        time.sleep(POLL_S * 5)
    return value
