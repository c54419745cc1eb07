"""Which conversation store a process uses: SQLite by default, PostgreSQL with database_url."""

from __future__ import annotations

import os
import socket
import uuid

from bots.settings import Settings
from bots.store.base import ConversationStore
from bots.store.sqlite import SqliteStore


def instance_id() -> str:
    """This process among the instances: host, process id and a random suffix (a restarted
    process is a new instance, so its predecessor's pending replies are swept)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def make_store(settings: Settings) -> ConversationStore:
    """The store the settings name (not opened yet: `await store.open()`)."""
    if not settings.database_url:
        return SqliteStore(settings.db_path, instance_id())
    # Imported here: a one-machine bot never loads the PostgreSQL driver.
    from bots.store.postgres import PostgresStore

    return PostgresStore(settings.database_url, instance_id())
