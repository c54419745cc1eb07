"""Who may see a document, and who will read an answer: the two halves of keeping documents private.

A folder's `knowledge.yaml` restricts some of its documents (see `parse_audience`); every other
document is for everyone. A `Reader` is who can read the place an answer will appear in, as the
platform adapter knows it. A restricted document is used only where every reader is allowed,
and only in a private place when its rule says `private_only`. When an adapter cannot tell who
reads a place it says "everyone", which sees public documents only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import yaml

KEY = "audience"
_RULE_KEYS = ("paths", "slack_users", "discord_users", "discord_roles", "private_only")
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")
_DISCORD_ID = re.compile(r"[0-9]{17,20}")
# Matches a top-level `audience:` in text that does not parse, to fail closed (see parse).
_DECLARES = re.compile(rf"^{KEY}\s*:", re.MULTILINE)


@dataclass(frozen=True)
class Reader:
    """Who can read the place an answer goes to.

    `users` None: anyone (a public channel, a guild channel, a place the adapter cannot tell).
    Otherwise the user ids of every reader; `roles` are the role ids and names of the asker when
    the asker is the only reader (a Discord interaction answered privately). `private`: a direct
    message or an answer only the asker sees. `everything`: an operator tool set to see every
    document (`http.audience = "operator"`).
    """

    platform: str
    users: frozenset[str] | None = None
    roles: frozenset[str] = frozenset()
    private: bool = False
    everything: bool = False

    @classmethod
    def alone(cls, platform: str, user: str, roles: Iterable[str] = ()) -> Reader:
        """The asker alone: a direct message, an ephemeral or `response_url` answer."""
        return cls(platform, frozenset({user}), frozenset(roles), private=True)

    @classmethod
    def members(cls, platform: str, users: Iterable[str]) -> Reader:
        """The members of a private channel or group DM (not private: others read it too)."""
        return cls(platform, frozenset(users))

    def describe(self) -> str:
        """Who reads the place, in a few words (for the workbench and logs)."""
        if self.everything:
            return "an operator (every document)"
        if self.users is None:
            return "everyone who can read the place"
        who = ", ".join(sorted(self.users))
        return f"{who} alone" if self.private else f"the members {who}"


EVERYONE = Reader("")
OPERATOR = Reader("", everything=True)  # the terminal, `bots ask`, evals: whoever has the files


def server_reader(setting: str) -> Reader:
    """Who the HTTP API and the workbench answer as, by `server.audience`: "operator" sees every
    document, "everyone" (the default) what a public channel would."""
    return OPERATOR if setting == "operator" else EVERYONE


@dataclass(frozen=True)
class Rule:
    """Who may see the documents matching `paths`: the users and roles listed, per platform."""

    paths: tuple[str, ...] = ("*",)
    slack_users: frozenset[str] = frozenset()
    discord_users: frozenset[str] = frozenset()
    discord_roles: frozenset[str] = frozenset()
    private_only: bool = False
    broken: bool = False  # from a knowledge.yaml that did not parse: nobody may see

    def matches(self, rel: str) -> bool:
        """Whether the document at `rel` (relative to the folder) is under this rule."""
        return any(fnmatchcase(rel, pattern) for pattern in self.paths)

    def allows(self, reader: Reader) -> bool:
        """Whether every reader of the place may see the documents under this rule."""
        if reader.everything:
            return True
        if self.broken or reader.users is None or not reader.users:
            return False
        if self.private_only and not reader.private:
            return False
        if reader.platform == "slack":
            return reader.users <= self.slack_users
        if reader.platform == "discord":
            alone = len(reader.users) == 1
            return all(
                user in self.discord_users or (alone and bool(reader.roles & self.discord_roles))
                for user in reader.users
            )
        return False

    def describe(self) -> str:
        """Who may see, in a few words: "slack users U1; discord roles HR; private places"."""
        if self.broken:
            return "nobody: knowledge.yaml does not parse (fix it to restore access)"
        parts = [
            f"{label} {', '.join(sorted(values))}"
            for label, values in (
                ("slack users", self.slack_users),
                ("discord users", self.discord_users),
                ("discord roles", self.discord_roles),
            )
            if values
        ]
        text = "; ".join(parts) or "nobody listed"
        return text + ("; in private places only" if self.private_only else "")


Access = tuple[Rule, ...]  # the rules a document is under; () = everyone
PUBLIC: Access = ()


def access_of(rel: str, rules: Sequence[Rule]) -> Access:
    """The rules the document at `rel` is under (it may be seen where any of them allows)."""
    return tuple(rule for rule in rules if rule.matches(rel))


def visible(access: Access, reader: Reader) -> bool:
    """Whether a document under `access` may reach a place read by `reader`."""
    return not access or any(rule.allows(reader) for rule in access)


def describe(access: Access) -> str:
    """Who may see a document under `access`, in a few words."""
    return "everyone" if not access else " or ".join(rule.describe() for rule in access)


def unreadable(text: str) -> tuple[Rule, ...]:
    """The rules of a knowledge.yaml that does not parse: if it declares an audience, everything
    in the folder is hidden until it is fixed (failing open would publish private documents)."""
    return (Rule(broken=True),) if _DECLARES.search(text) else ()


def parse_audience(node: yaml.Node, value: Any, where: str) -> tuple[tuple[Rule, ...], list[str]]:
    """The rules of an `audience:` list, and its problems as "file:line: key: message".

    `where` is "file:line" of the key; problems name the line of each entry or key:

        audience:
          - paths: ["hr/*"]                  # default: every document of the folder
            slack_users: [U012ABCDEF]
            discord_users: ["234567890123456789"]
            discord_roles: [HR, "345678901234567890"]   # role names or ids
            private_only: true               # only in a DM or an answer only the asker sees
    """
    path = where.rsplit(":", 1)[0]
    if not isinstance(node, yaml.SequenceNode) or not isinstance(value, list) or not value:
        return (), [f"{where}: {KEY}: must be a list of rules, each with users or roles"]
    rules: list[Rule] = []
    problems: list[str] = []
    for item_node, item in zip(node.value, value, strict=True):
        line = item_node.start_mark.line + 1
        rule, found = _rule(item_node, item, path, line)
        problems += found
        if rule is not None:
            rules.append(rule)
    return tuple(rules), problems


def _rule(node: yaml.Node, item: Any, path: str, line: int) -> tuple[Rule | None, list[str]]:
    if not isinstance(node, yaml.MappingNode) or not isinstance(item, dict):
        return None, [f"{path}:{line}: {KEY}: each rule is a mapping ({', '.join(_RULE_KEYS)})"]
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for key, value in item.items():
        where = f"{path}:{lines.get(key, line)}: {KEY}.{key}"
        if key not in _RULE_KEYS:
            problems.append(f"{where}: unknown key (known: {', '.join(_RULE_KEYS)})")
        elif key == "private_only":
            if not isinstance(value, bool):
                problems.append(f"{where}: must be true or false")
            fields[key] = value is True
        elif not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            problems.append(f"{where}: must be a list")
        else:
            found = [str(v) for v in value]
            problem = _check_ids(key, found)
            if problem:
                problems.append(f"{where}: {problem}")
            fields[key] = tuple(found) if key == "paths" else frozenset(found)
    if not problems and not any(fields.get(k) for k in _RULE_KEYS[1:4]):
        problems.append(
            f"{path}:{line}: {KEY}: a rule must name slack_users, discord_users or discord_roles"
        )
    if problems:
        return None, problems
    return Rule(**fields), []


def _check_ids(key: str, values: list[str]) -> str | None:
    """What is wrong with the values of `key`, naming the first bad one; None when all are fine."""
    for value in values:
        if key == "paths" and not value:
            return "a path glob must not be empty"
        if key == "slack_users" and not _SLACK_USER.fullmatch(value):
            hint = " (that looks like a Discord id: put it under discord_users)"
            return f"{value!r} is not a Slack user id such as U012ABCDEF" + (
                hint if _DISCORD_ID.fullmatch(value) else ""
            )
        if key == "discord_users" and not _DISCORD_ID.fullmatch(value):
            hint = " (that looks like a Slack id: put it under slack_users)"
            return f"{value!r} is not a Discord user id (a number of 17 to 20 digits)" + (
                hint if _SLACK_USER.fullmatch(value) else ""
            )
        if key == "discord_roles" and not value.strip():
            return "a role name must not be empty"
    return None
