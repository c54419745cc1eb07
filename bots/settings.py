"""Settings: `bots.toml` + environment (and `.env`) + command-line flags -> one object, read once.

Precedence, lowest first: defaults, `bots.toml`, environment variables, flags. Every setting has
an environment name `BOTS_<SECTION>_<KEY>` (e.g. `BOTS_MODEL_N_CTX=8192`); the platform secrets
also keep their usual names (`DISCORD_TOKEN`, `SLACK_BOT_TOKEN`, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

SETTINGS_FILE = "bots.toml"
FLASH_ATTN = ("auto", "on", "off")
SPECULATION = ("ngram", "off")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*\.?")

# Settings that are also read from their conventional environment names.
ALIASES: dict[str, tuple[str, str]] = {
    "DISCORD_TOKEN": ("discord", "token"),
    "DISCORD_API_URL": ("discord", "api_url"),
    "DISCORD_GATEWAY_URL": ("discord", "gateway_url"),
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
    "SLACK_HTTP_PORT": ("slack", "http_port"),
    "SLACK_API_URL": ("slack", "api_url"),
    "BOTS_API_TOKEN": ("server", "api_token"),
}


SERVER_AUDIENCES = ("everyone", "operator")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and where it came from."""


@dataclass(frozen=True)
class ModelSettings:
    path: str = ""
    endpoint: str = ""
    endpoint_model: str = ""
    endpoint_api_key: str = field(default="", repr=False)
    engine: str = "batched"
    n_ctx: int = 8192
    n_threads: int = 0
    # Decode with fewer threads while other processes keep cores busy (README, Performance):
    # llama.cpp's threads stall at every barrier when one of them loses its core.
    adapt_threads: bool = True
    n_gpu_layers: int = 0
    parallel: int = 8
    queue_size: int = 32
    timeout_s: float = 120.0
    retries: int = 2
    max_tokens: int = 400
    temperature: float = 0.3
    top_p: float = 0.9
    repeat_penalty: float = 1.15
    quantize_q8: bool = True
    # Where the Q8_0 copy is kept (empty: <data_dir>/models).
    cache_dir: str = ""
    # RAM reserved at start for idle persona prefixes and conversations moved out of the KV cache.
    park_mb: int = 512
    # Flash attention in the batched engine: "auto" (llama.cpp decides: on for CPUs and most
    # GPUs), "on" or "off". On a CPU, "off" generates faster deep into a long prompt and "on"
    # evaluates prompts and concurrent streams faster (README, Performance).
    flash_attn: str = "auto"
    # Prompt-lookup speculation in the batched engine: "ngram" drafts what a reply copies from
    # its own context (documents, instructions, history), up to draft_max tokens a step, and
    # keeps what the model agrees with (the same reply, faster when it quotes); "off".
    speculation: str = "ngram"
    draft_max: int = 16
    draft_max_streams: int = 2  # steps of more streams draft nothing (README: Performance)
    # Run the local model in a supervised child process: a native crash costs one reply only.
    isolate: bool = True
    # Kill and restart the model worker after this long without progress while it has work.
    watchdog_s: float = 60.0
    # Give up (and exit non-zero) after this many worker restarts within restart_window_s.
    max_restarts: int = 5
    restart_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.flash_attn not in FLASH_ATTN:
            raise SettingsError(
                f"model.flash_attn: {self.flash_attn!r} must be one of {', '.join(FLASH_ATTN)}"
            )
        if self.speculation not in SPECULATION:
            raise SettingsError(
                f"model.speculation: {self.speculation!r} must be one of {', '.join(SPECULATION)}"
            )
        for name in ("draft_max", "draft_max_streams"):
            if getattr(self, name) < 1:
                raise SettingsError(f"model.{name}: {getattr(self, name)} must be at least 1")


@dataclass(frozen=True)
class RetrievalSettings:
    top_k: int = 4
    min_score: float = 0.3
    min_score_open: float = 0.1
    max_knowledge_tokens: int = 1200


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8321
    api_token: str = field(default="", repr=False)
    max_request_bytes: int = 1_000_000
    cors_origins: tuple[str, ...] = ()
    log_json: bool = False
    shutdown_grace_s: float = 20.0
    # Per client of the HTTP API and workbench chat (0: no limit); a client is its address.
    max_in_flight_per_client: int = 2
    rate_limit_requests: int = 60
    rate_limit_window_s: float = 60.0
    # Reverse proxies (IPs or networks) whose X-Forwarded-For names the client.
    trusted_proxies: tuple[str, ...] = ()
    # What the HTTP API and the workbench may answer from: "everyone" (documents restricted by
    # a knowledge.yaml audience are never used) or "operator" (every document).
    audience: str = "everyone"
    # Without an API token, requests must name the server by an IP address, localhost, `host`,
    # or one of these names (".example.com": the name and every name under it).
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.audience not in SERVER_AUDIENCES:
            raise SettingsError(
                f"server.audience: {self.audience!r} must be one of {', '.join(SERVER_AUDIENCES)}"
            )
        for name in self.allowed_hosts:
            if not HOST_NAME.fullmatch(name):
                raise SettingsError(
                    f"server.allowed_hosts: {name!r} is not a host name (a name such as "
                    "bots.example.com or .example.com, without a scheme, port or path)"
                )
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise SettingsError(
                    f"server.trusted_proxies: {entry!r} is not an IP address or network "
                    "(e.g. 10.0.0.5 or 10.0.0.0/8)"
                ) from exc


@dataclass(frozen=True)
class PolicySettings:
    rate_limit_messages: int = 6
    rate_limit_window_s: float = 60.0
    allow_guilds: tuple[str, ...] = ()
    deny_guilds: tuple[str, ...] = ()
    allow_channels: tuple[str, ...] = ()
    deny_channels: tuple[str, ...] = ()
    allow_teams: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscordSettings:
    token: str = field(default="", repr=False)
    api_url: str = ""
    gateway_url: str = ""
    persona_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Gateway shards of the bot (Discord requires more than one past 2,500 guilds). With
    # database_url set, each shard is held by exactly one of the instances at a time.
    shard_count: int = 1
    # Seconds between progressive edits of a streamed reply (Discord allows ~5 edits / 5 s).
    edit_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.shard_count < 1:
            raise SettingsError(f"discord.shard_count: {self.shard_count} must be 1 or more")


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str = field(default="", repr=False)
    app_token: str = field(default="", repr=False)
    signing_secret: str = field(default="", repr=False)
    http_port: int = 3000
    api_url: str = ""
    # HTTP Events mode listens here; Slack must reach it (directly or through a proxy).
    http_host: str = "0.0.0.0"
    # Stream replies with chat.startStream/appendStream/stopStream; off: chat.update edits.
    streaming: bool = True
    # Public URL under which `<persona id>/<avatar file>` is served, for persona icons.
    icon_base_url: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, in one immutable object passed explicitly."""

    root: Path = Path(".")
    personas_dir: Path = Path("personas")
    knowledge_dir: Path = Path("knowledge")
    data_dir: Path = Path(".bots")
    default_persona: str = ""
    # Empty: the conversations live in <data_dir>/conversations.sqlite3 (one machine).
    # postgresql://user:password@host/dbname: several instances share one PostgreSQL database.
    database_url: str = field(default="", repr=False)
    model: ModelSettings = field(default_factory=ModelSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "conversations.sqlite3"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    def secrets(self) -> list[str]:
        """Every secret value set, so logs and tests can check none leaks."""
        values = [
            self.discord.token,
            *self.discord.persona_tokens,
            self.slack.bot_token,
            self.slack.app_token,
            self.slack.signing_secret,
            self.server.api_token,
            self.model.endpoint_api_key,
            self.database_url,
        ]
        return [v for v in values if v]


_SECTIONS = ("model", "retrieval", "server", "policy", "discord", "slack")


# A setting is secret when its field is declared with repr=False (so no repr shows it either).
def _secret_fields(section: Any) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(section) if not f.repr]


def without_secrets(settings: Settings) -> Settings:
    """The same settings with every secret blank: for a process that needs none (the model
    worker)."""
    sections: dict[str, Any] = {}
    for name in _SECTIONS:
        section = getattr(settings, name)
        blank = {f.name: _default(f) for f in _secret_fields(section)}
        sections[name] = dataclasses.replace(section, **blank)
    return dataclasses.replace(settings, database_url="", **sections)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def secret_environment_names() -> set[str]:
    """Environment variables that may hold a secret setting (`BOTS_SLACK_BOT_TOKEN`, ...)."""
    names = {
        f"BOTS_{name}_{f.name}".upper()
        for name in _SECTIONS
        for f in _secret_fields(_section_class(name, ""))
    }
    names |= {alias for alias, (s, k) in ALIASES.items() if f"BOTS_{s}_{k}".upper() in names}
    return names | {"BOTS_DATABASE_URL"}


_TOP = ("personas_dir", "knowledge_dir", "data_dir", "default_persona", "database_url")


def load_settings(
    root: Path | None = None,
    *,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from `root/bots.toml`, `root/.env`, the environment and flag overrides.

    `overrides` uses dotted names (`"model.n_ctx"`, `"personas_dir"`); None values are ignored.
    """
    root = (root or Path.cwd()).resolve()
    raw: dict[str, Any] = {s: {} for s in _SECTIONS}
    path = config or root / SETTINGS_FILE
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: {exc}") from exc
        _merge(raw, data, str(path))
    env = {**dotenv_values(root / ".env"), **(environ if environ is not None else os.environ)}
    for name, value in env.items():
        if value is None:
            continue
        target = ALIASES.get(name) or _env_target(name)
        if target is not None:
            _put(raw, target, value, f"environment {name}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, _, key = dotted.rpartition(".")
            _put(raw, (section, key), value, f"flag {dotted}")
    return _build(root, raw)


def _env_target(name: str) -> tuple[str, str] | None:
    if not name.startswith("BOTS_"):
        return None
    rest = name[5:].lower()
    for section in _SECTIONS:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    return ("", rest) if rest in _TOP else None


def _merge(raw: dict[str, Any], data: Mapping[str, Any], source: str) -> None:
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{source}: [{key}] must be a table")
            for sub, item in value.items():
                _put(raw, (key, sub), item, source)
        else:
            _put(raw, ("", key), value, source)


def _put(raw: dict[str, Any], target: tuple[str, str], value: Any, source: str) -> None:
    section, key = target
    fields = {f.name: f for f in dataclasses.fields(_section_class(section, source))}
    if key not in fields or (section == "" and key not in _TOP):
        where = f"{section}.{key}" if section else key
        raise SettingsError(f"{source}: unknown setting {where}")
    (raw[section] if section else raw).__setitem__(key, (value, source))


def _section_class(section: str, source: str) -> type:
    classes: dict[str, type] = {
        "": Settings,
        "model": ModelSettings,
        "retrieval": RetrievalSettings,
        "server": ServerSettings,
        "policy": PolicySettings,
        "discord": DiscordSettings,
        "slack": SlackSettings,
    }
    if section not in classes:
        raise SettingsError(f"{source}: unknown settings section [{section}]")
    return classes[section]


def _convert(cls: type, name: str, value: Any, source: str) -> Any:
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    sample = default.default if default.default is not dataclasses.MISSING else None
    label = f"{source}: {name}"
    try:
        if isinstance(sample, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(sample, int):
            return int(value)
        if isinstance(sample, float):
            return float(value)
        if isinstance(sample, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if isinstance(sample, Path):
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{label}: bad value {value!r}") from exc


def _build(root: Path, raw: dict[str, Any]) -> Settings:
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        cls = _section_class(section, "")
        values = {k: _convert(cls, k, v, src) for k, (v, src) in raw[section].items()}
        sections[section] = cls(**values)
    top = {k: _convert(Settings, k, *raw[k]) for k in _TOP if k in raw}
    for key in ("personas_dir", "knowledge_dir", "data_dir"):
        path = Path(top.get(key, getattr(Settings, key)))
        top[key] = path if path.is_absolute() else root / path
    url = top.get("database_url", "")
    if url and not url.startswith(("postgresql://", "postgres://")):
        # The value may hold a password: name where it came from, never the value.
        raise SettingsError(
            f"{raw['database_url'][1]}: database_url must be a postgresql:// URL "
            "(postgresql://user:password@host:5432/dbname), or empty for SQLite"
        )
    return Settings(root=root, **top, **sections)
