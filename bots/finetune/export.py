"""`bots export PERSONA`: the persona's stored replies as training data, in the formats people use.

Files written to the output folder:
  chat.jsonl         OpenAI chat fine-tuning: {"messages": [...]}, one line per reply worth
                     learning (thumbs-up or unrated), the prompt as the model saw it, then the
                     reply with "weight": 1; earlier answers in it, a thumbs-down one included,
                     are context with "weight": 0 and are never trained on.
  preferences.jsonl  OpenAI preference (DPO): {"input": {"messages"}, "preferred_output",
                     "non_preferred_output"}, only where a real better answer exists: the same
                     question asked again in the conversation after a thumbs-down, answered with
                     a thumbs-up.
  kto.jsonl          TRL's unpaired preference format: {"prompt", "completion", "label"}, one
                     line per rated reply (label true for thumbs-up).
  provenance.jsonl   one line per chat.jsonl line: turn id, platform, pseudonymised user, rating,
                     persona version (kept out of chat.jsonl, which stays exactly OpenAI's).
  manifest.json      persona, versions, data hash, counts, exclusions, options.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bots.chat.prompt import system_message, user_message
from bots.finetune.pseudonyms import SECRET_NAME, Pseudonyms
from bots.finetune.records import AccessOf, Exchange, exchanges, reason_kind
from bots.persona.model import Persona
from bots.store.base import ConversationStore

# Fewer examples than this teach a LoRA nothing reliable: OpenAI refuses fewer than 10 and
# recommends 50 or more; 20 leaves a held-out split of a few examples with the rest to learn from.
MIN_EXAMPLES = 20
FILES = ("chat.jsonl", "preferences.jsonl", "kto.jsonl", "provenance.jsonl")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how (the command line's options)."""

    out: Path
    platforms: tuple[str, ...] = ()
    since: datetime.date | None = None
    with_sources: bool = True
    real_ids: bool = False

    def since_timestamp(self) -> float:
        """The start of `since` (UTC) as a Unix time; 0 without it."""
        if self.since is None:
            return 0.0
        start = datetime.datetime.combine(self.since, datetime.time(), datetime.UTC)
        return start.timestamp()

    def as_dict(self) -> dict[str, Any]:
        """The options as the manifest records them."""
        return {
            "platforms": list(self.platforms),
            "since": self.since.isoformat() if self.since else None,
            "with_sources": self.with_sources,
            "real_ids": self.real_ids,
        }


@dataclass(frozen=True)
class ExportResult:
    """What was written, what was left out and why."""

    persona_id: str
    folder: Path
    counts: dict[str, int]  # lines per file
    excluded: dict[str, int]  # reason -> replies
    persona_versions: dict[str, int]  # content hash -> chat examples
    thumbs_down: int
    data_hash: str

    @property
    def enough(self) -> bool:
        """Whether there are enough chat examples to train on."""
        return self.counts["chat.jsonl"] >= MIN_EXAMPLES


async def export_persona(
    store: ConversationStore, persona: Persona, access: AccessOf, options: ExportOptions
) -> ExportResult:
    """Write the persona's training data into `options.out`; the result says what it holds."""
    found = await exchanges(
        store,
        persona.id,
        access,
        platforms=options.platforms,
        since=options.since_timestamp(),
        with_sources=options.with_sources,
    )
    names = Pseudonyms((await store.secret(SECRET_NAME)).encode(), real=options.real_ids)
    users: dict[str, set[str]] = {}  # every user id the store knows, to scrub from the text
    for feedback in await store.feedback(persona.id):
        users.setdefault(feedback.platform, set()).add(feedback.user_id)
    for exchange in found:
        users.setdefault(exchange.platform, set()).add(exchange.question.user_id)
        readers = exchange.turn.made_from.get("reader", {}).get("users") or ()
        users[exchange.platform].update(readers)
    kept = [e for e in found if not e.excluded]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in FILES}
    versions: Counter[str] = Counter()
    for exchange in kept:
        prompt = _prompt(exchange, persona, names, users, options.with_sources)
        answer = {
            "role": "assistant",
            "content": _scrub(exchange.turn.content, exchange, names, users),
        }
        if exchange.rating >= 0:
            rows["chat.jsonl"].append({"messages": [*prompt, {**answer, "weight": 1}]})
            rows["provenance.jsonl"].append(_provenance(exchange, names))
            versions[exchange.turn.persona_version or "unrecorded"] += 1
        if exchange.rating != 0:
            rows["kto.jsonl"].append(
                {
                    "prompt": _unweighted(prompt),
                    "completion": [answer],
                    "label": exchange.rating > 0,
                }
            )
        better = _better(exchange, kept)
        if better is not None:
            rows["preferences.jsonl"].append(
                {
                    "input": {"messages": _unweighted(prompt)},
                    "preferred_output": [
                        {
                            "role": "assistant",
                            "content": _scrub(better.turn.content, better, names, users),
                        }
                    ],
                    "non_preferred_output": [answer],
                }
            )
    options.out.mkdir(parents=True, exist_ok=True)
    hashes = {name: _write_jsonl(options.out / name, rows[name]) for name in FILES}
    data_hash = hashlib.sha256(
        "".join(f"{name}:{hashes[name]}\n" for name in FILES[:3]).encode()
    ).hexdigest()
    excluded = Counter(reason_kind(e.excluded) for e in found if e.excluded)
    counts = {name: len(rows[name]) for name in FILES}
    thumbs_down = sum(1 for e in kept if e.rating < 0)
    result = ExportResult(
        persona.id, options.out, counts, dict(excluded), dict(versions), thumbs_down, data_hash
    )
    manifest = {
        "format": FORMAT_VERSION,
        "persona": persona.id,
        "persona_version": persona.content_hash,
        "persona_versions": dict(versions),
        "data_hash": f"sha256:{data_hash}",
        "files": {name: {"examples": counts[name], "sha256": hashes[name]} for name in FILES},
        "excluded": dict(excluded),
        "min_examples": MIN_EXAMPLES,
        "enough": result.enough,
        "options": options.as_dict(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (options.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result


def summary(result: ExportResult, persona: Persona) -> list[str]:
    """What the export holds, what it left out and why, and whether it is enough to train on."""
    counts = result.counts
    lines = [
        f"exported {result.persona_id} (persona version {persona.content_hash}) to {result.folder}"
    ]
    described = {
        "chat.jsonl": "examples (thumbs-up or unrated replies, weight 1)",
        "preferences.jsonl": "preference pairs (a thumbs-up answer after a thumbs-down one)",
        "kto.jsonl": "rated replies (label true: thumbs-up)",
        "provenance.jsonl": "records, one per chat example",
    }
    lines += [f"  {name:<18} {counts[name]:>5} {described[name]}" for name in FILES]
    if result.thumbs_down:
        lines.append(
            f"  {result.thumbs_down} thumbs-down replies: never trained on (context with weight 0 "
            "in later examples, label false in kto.jsonl)"
        )
    older = {v: n for v, n in result.persona_versions.items() if v != persona.content_hash}
    if older:
        lines.append(
            f"  {sum(older.values())} examples were answered by other persona versions "
            f"({', '.join(sorted(older))}): their system message is the one they were given"
        )
    total = sum(result.excluded.values())
    if total:
        lines.append(f"  excluded {total} replies:")
        lines += [
            f"    {n:>5} {reason}"
            for reason, n in sorted(result.excluded.items(), key=lambda kv: -kv[1])
        ]
    if not result.enough:
        lines.append(
            f"only {counts['chat.jsonl']} examples to train on; at least {MIN_EXAMPLES} are "
            f"needed ({MIN_EXAMPLES - counts['chat.jsonl']} more: keep the persona in use and "
            "rate its answers)"
        )
    return lines


def _prompt(
    exchange: Exchange,
    persona: Persona,
    names: Pseudonyms,
    users: dict[str, set[str]],
    with_sources: bool,
) -> list[dict[str, Any]]:
    """The messages the model was given for this reply, with earlier answers at weight 0."""
    system = exchange.system or system_message(persona)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in exchange.history:
        entry: dict[str, Any] = {
            "role": message.role,
            "content": _scrub(message.content, exchange, names, users),
        }
        if message.role == "assistant":
            entry["weight"] = 0
        messages.append(entry)
    question = exchange.question.content
    text = user_message(question, exchange.documents) if with_sources else question
    messages.append({"role": "user", "content": _scrub(text, exchange, names, users)})
    return messages


def _better(exchange: Exchange, kept: Sequence[Exchange]) -> Exchange | None:
    """The thumbs-up answer to the same question asked again later in the same conversation,
    after this answer got a thumbs-down; None when there is none (or this was not rated down)."""
    if exchange.rating >= 0:
        return None
    asked = " ".join(exchange.question.content.split()).casefold()
    for later in kept:
        if (
            later.turn.conversation_id == exchange.turn.conversation_id
            and later.turn.id > exchange.turn.id
            and later.rating > 0
            and " ".join(later.question.content.split()).casefold() == asked
        ):
            return later
    return None


def _scrub(text: str, exchange: Exchange, names: Pseudonyms, users: dict[str, set[str]]) -> str:
    return names.scrub(text, exchange.platform, users.get(exchange.platform, set()))


def _unweighted(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _provenance(exchange: Exchange, names: Pseudonyms) -> dict[str, Any]:
    return {
        "turn_id": exchange.turn.id,
        "platform": exchange.platform,
        "user": names.of(exchange.platform, exchange.question.user_id),
        "rating": exchange.rating,
        "persona_version": exchange.turn.persona_version,
        "created_at": exchange.turn.created_at,
        "documents": [d.path for d in exchange.documents],
    }


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> str:
    """Write one JSON object a line; the file's sha256."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
