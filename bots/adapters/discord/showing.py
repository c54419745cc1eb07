"""How a persona shows in a Discord channel: its own bot, its webhook, or plain messages.

A persona with a bot of its own posts through that bot's connection; elsewhere the main bot
posts through the persona's webhook (its name and avatar) where it may manage webhooks, and as
plain messages prefixed with the persona's name where it may not.
"""

from __future__ import annotations

from typing import Any

import discord

from bots.adapters.discord.client import PersonaClient
from bots.adapters.discord.sinks import (
    MESSAGE_LIMIT,
    ChannelSink,
    DiscordSink,
    PersonaWebhooks,
    RetryPolicy,
    WebhookSink,
)
from bots.persona.model import Persona
from bots.persona.registry import PersonaRegistry


class PersonaDisplay:
    """Chooses the sink a persona's reply is shown through."""

    def __init__(
        self,
        clients: list[PersonaClient],
        webhooks: PersonaWebhooks,
        registry: PersonaRegistry,
        retry: RetryPolicy,
    ) -> None:
        self.clients = clients
        self.webhooks = webhooks
        self.registry = registry
        self.retry = retry

    def client_of_persona(
        self, persona_id: str, guild: discord.Guild | None
    ) -> PersonaClient | None:
        """The persona's own bot, if it has one that is in this guild."""
        for client in self.clients:
            if client.persona_id == persona_id and (guild is None or client.get_guild(guild.id)):
                return client
        return None

    async def sink_for(
        self,
        channel: Any,
        guild: discord.Guild | None,
        persona: Persona,
        *,
        reference: discord.Message | None,
    ) -> tuple[DiscordSink, int]:
        """How the persona shows: its own bot, else its webhook where allowed, else plain
        messages of the main bot prefixed with its name."""
        own_bot = self.client_of_persona(persona.id, guild)
        if own_bot is not None:
            mine = channel_as(own_bot, channel, guild)
            return ChannelSink(mine, self.retry, reference=reference), MESSAGE_LIMIT
        prefix = f"**{persona.display_name}:** " if len(self.registry.personas()) > 1 else ""
        limit = MESSAGE_LIMIT - len(prefix)
        plain = ChannelSink(channel, self.retry, reference=reference, prefix=prefix)
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        me = guild.me if guild else None
        if me is None or not isinstance(parent, discord.TextChannel | discord.ForumChannel):
            return plain, limit
        hook = await self.webhooks.get(parent, persona, me)
        if hook is None:
            return plain, limit
        sink = WebhookSink(
            hook,
            persona.display_name,
            self.retry,
            thread=channel if isinstance(channel, discord.Thread) else None,
            fallback=plain,
            on_broken=lambda: self.webhooks.forget(parent.id, persona.id),
        )
        return sink, limit


def channel_as(client: PersonaClient, channel: Any, guild: discord.Guild | None) -> Any:
    """`channel` as `client` sees it, so that a persona's own bot posts through its own
    connection (DMs are only ever seen by the bot they were sent to)."""
    if guild is None or client.user is None:
        return channel
    own = client.get_channel(channel.id)
    if own is not None:
        return own
    return client.get_partial_messageable(channel.id, guild_id=guild.id)
