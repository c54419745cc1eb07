"""Stable pseudonyms for the user ids in an export.

HMAC-SHA256 keyed with a secret kept in the store itself (`ConversationStore.secret`), not a
plain hash: user ids are few and listable (anyone in the workspace can list the members), so a
plain hash of each is reversed by hashing the list. With the key in the store and never in the
export, the files can be handed on; the same store gives the same pseudonym every run (on any
machine, and after `bots db copy`), so examples stay grouped by user across exports.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

SECRET_NAME = "export-pseudonyms"
PREFIX = "user-"
DIGEST_CHARS = 12  # 48 bits: no collision among a bot's users in practice, short to read
# A mention as Slack (<@U012ABC>) and Discord (<@123...>, <@!123...>) write it: whoever it names.
MENTION = re.compile(r"<@!?([A-Za-z0-9]+)>")


@dataclass(frozen=True)
class Pseudonyms:
    """Replaces user ids with pseudonyms (or keeps them, with `real`)."""

    key: bytes
    real: bool = False

    def of(self, platform: str, user_id: str) -> str:
        """The pseudonym of `user_id` on `platform` ("" stays "")."""
        if self.real or not user_id:
            return user_id
        digest = hmac.new(self.key, f"{platform}:{user_id}".encode(), hashlib.sha256)
        return PREFIX + digest.hexdigest()[:DIGEST_CHARS]

    def scrub(self, text: str, platform: str, user_ids: set[str]) -> str:
        """`text` with every mention and every other known user id in it replaced."""
        if self.real:
            return text
        text = MENTION.sub(lambda match: f"<@{self.of(platform, match.group(1))}>", text)
        known = sorted((u for u in user_ids if u), key=len, reverse=True)
        if not known:
            return text
        pattern = re.compile("|".join(re.escape(u) for u in known))
        return pattern.sub(lambda match: self.of(platform, match.group(0)), text)
