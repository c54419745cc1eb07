"""The training data `bots train` reads: an export folder of `chat.jsonl` and `manifest.json`.

`chat.jsonl` is OpenAI's chat fine-tuning format, one conversation a line:
`{"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}]}`.
`weight` is only on assistant messages (default 1); 0 keeps the turn as context with no loss on
it (a thumbs-down answer). The manifest says whose data it is and its hash; without one the
hash is taken of the JSONL itself. No torch here: the CLI checks the data before it pays for
loading the training libraries.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

CHAT_FILE = "chat.jsonl"
MANIFEST_FILE = "manifest.json"
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """The export folder cannot be trained on; the message names the file (and line)."""


@dataclass(frozen=True)
class Message:
    """One message; `weight` 1 on an assistant message means its tokens carry the loss."""

    role: str
    content: str
    weight: int = 0


@dataclass(frozen=True)
class Conversation:
    """One line of chat.jsonl."""

    messages: tuple[Message, ...]

    @property
    def trained(self) -> bool:
        """Whether any message of it carries loss."""
        return any(m.weight for m in self.messages)


@dataclass(frozen=True)
class Dataset:
    """An export folder read: its conversations, whose they are and the hash of the data."""

    folder: Path
    persona: str | None
    data_hash: str
    conversations: tuple[Conversation, ...]


@dataclass(frozen=True)
class Split:
    """The conversations trained on and those held out to measure the loss on unseen data."""

    train: tuple[Conversation, ...]
    held_out: tuple[Conversation, ...]


def read_dataset(folder: Path) -> Dataset:
    """Read and check `folder/chat.jsonl` (and `manifest.json` where there is one)."""
    path = folder / CHAT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (bots export PERSONA writes it)") from None
    conversations = tuple(
        _conversation(path, number, line)
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1)
        if line.strip()
    )
    persona, data_hash = _manifest(folder / MANIFEST_FILE)
    if data_hash is None:
        data_hash = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    return Dataset(folder, persona, data_hash, conversations)


def split_dataset(dataset: Dataset, held_out_share: float, seed: int) -> Split:
    """Shuffle the conversations that carry loss (with `seed`) and hold out a share of them.

    At least one is held out and at least one trained on; fewer than two is a `DataError`.
    """
    usable = [c for c in dataset.conversations if c.trained]
    if len(usable) < 2:
        raise DataError(
            f"{dataset.folder / CHAT_FILE}: {len(usable)} conversation(s) with an answer to "
            "train on (weight 1); at least 2 are needed, a few dozen to learn anything"
        )
    random.Random(seed).shuffle(usable)
    held = min(max(1, round(len(usable) * held_out_share)), len(usable) - 1)
    return Split(train=tuple(usable[held:]), held_out=tuple(usable[:held]))


def _conversation(path: Path, number: int, line: str) -> Conversation:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where}: not JSON: {exc}") from exc
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: needs a non-empty "messages" list')
    return Conversation(tuple(_message(where, m) for m in messages))


def _message(where: str, item: object) -> Message:
    if not isinstance(item, dict):
        raise DataError(f"{where}: each message must be an object")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise DataError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise DataError(f'{where}: a {role} message needs a string "content"')
    weight = item.get("weight", 1 if role == "assistant" else 0)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise DataError(f"{where}: weight must be 0 or 1, got {weight!r}")
    if weight and role != "assistant":
        raise DataError(f"{where}: only assistant messages carry a weight")
    return Message(role, content, weight)


def _manifest(path: Path) -> tuple[str | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: must be a JSON object")
    persona, data_hash = data.get("persona"), data.get("data_hash")
    return (
        persona if isinstance(persona, str) else None,
        data_hash if isinstance(data_hash, str) else None,
    )
