"""The Discord slash commands: `/ask`, `/persona list`, `/persona info`, `/reset`.

Declared with discord.py's `app_commands` and synced when the bot starts. `SlashCommands` does
the work, through the adapter's reply path (`ReplyRunner`), so a command answer streams, is
stored and is refused exactly like a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import aiohttp
import discord
from discord import app_commands

from bots.adapters.delivery import Delivery
from bots.adapters.discord.context import PLATFORM, Conversation
from bots.adapters.discord.showing import PersonaDisplay
from bots.adapters.discord.sinks import (
    MESSAGE_LIMIT,
    NO_MENTIONS,
    ChannelSink,
    DiscordSink,
    InteractionSink,
    RetryPolicy,
    defuse_mentions,
)
from bots.adapters.discord.view import DiscordSurface, SinkMaker
from bots.chat import notices
from bots.chat.model import Admission, ChatRefused, Incoming
from bots.knowledge.audience import Reader
from bots.persona.model import Persona
from bots.persona.registry import PersonaRegistry

log = logging.getLogger(__name__)

QUESTION_MAX = 4000
THREAD_NAME_LIMIT = 100
CHOICES_LIMIT = 25  # Discord shows at most 25 autocomplete choices
CHOICE_NAME_LIMIT = 100
EMBED_FIELD_LIMIT = 1024
LIST_LIMIT = 1900

RESET_CHAINS = (
    "Here each reply chain is its own conversation: post a new message (not a reply) to start "
    "fresh. /reset forgets threads and DMs."
)


class ReplyRunner(Protocol):
    """What the commands need of the adapter: its checks, persona choice and reply path."""

    registry: PersonaRegistry
    delivery: Delivery
    display: PersonaDisplay
    retry: RetryPolicy

    @property
    def default_persona(self) -> str: ...

    def accepting(self) -> bool: ...

    async def first_sighting(self, key: str) -> bool: ...

    def place_allowed(self, channel: Any, guild: discord.Guild | None) -> bool: ...

    def choose(
        self, text: str, channel: Any, conversation: Conversation
    ) -> tuple[str | None, str]: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def surface(
        self,
        sink: SinkMaker,
        notify: Callable[[str], Awaitable[None]],
        typing_in: discord.abc.Messageable | None,
        explicit: bool,
    ) -> DiscordSurface: ...


class SlashCommands:
    """The handlers behind the commands."""

    def __init__(self, runner: ReplyRunner) -> None:
        self.runner = runner
        self.registry = runner.registry

    async def admit(self, interaction: discord.Interaction) -> bool:
        """False while stopping, or for an interaction already answered (a gateway replay)."""
        if not self.runner.accepting():
            return False
        if not await self.runner.first_sighting(f"interaction:{interaction.id}"):
            log.info("interaction %s was already answered (gateway replay)", interaction.id)
            return False
        return True

    async def ask(
        self,
        interaction: discord.Interaction,
        question: str,
        persona: str | None,
        thread: bool,
        private: bool = False,
    ) -> None:
        """`/ask`: answer streamed into the command's response (only the asker sees it when
        `private`), or in a new thread."""
        # A tracked task, so that stopping the adapter finishes or closes off this reply too.
        await self.runner.spawn(self._ask(interaction, question, persona, thread, private))

    async def _ask(
        self,
        interaction: discord.Interaction,
        question: str,
        persona: str | None,
        thread: bool,
        private: bool,
    ) -> None:
        channel = interaction.channel
        if channel is None or not self.runner.place_allowed(channel, interaction.guild):
            await ephemeral(interaction, notices.NOT_HERE)
            return
        if persona:
            named = self.find(persona)
            if named is None:
                await ephemeral(interaction, notices.NO_SUCH_PERSONA)
                return
            persona_id, text = named.id, question
        else:
            chosen, text = self.runner.choose(question, channel, Conversation(""))
            if chosen is None:
                await ephemeral(interaction, notices.NO_PERSONAS)
                return
            persona_id = chosen
        if interaction.guild is None:
            place = f"dm:{channel.id}"
        elif private:
            place = f"ask:{interaction.id}"  # its own conversation: no one else's history
        elif isinstance(channel, discord.Thread):
            place = f"thread:{channel.id}"
        else:
            place = f"ask:{interaction.id}"
        roles = member_roles(interaction.user)
        reader = reader_of(interaction.user, None if private else interaction.guild)
        incoming = Incoming(
            PLATFORM, place, str(interaction.user.id), text, persona_id, roles=roles, reader=reader
        )
        try:
            # Admitted before the interaction is answered, so that a refusal is private.
            admission = await self.runner.delivery.admit(incoming)
        except ChatRefused as refused:
            await ephemeral(interaction, refused.user_message)
            return
        if thread and not private and isinstance(channel, discord.TextChannel):
            await self._ask_in_thread(interaction, channel, admission)
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        prefix = f"**{admission.persona.display_name}:** "

        async def sink(_: Persona) -> tuple[DiscordSink, int]:
            shown = InteractionSink(
                interaction, self.runner.retry, prefix=prefix, ephemeral=private
            )
            return shown, MESSAGE_LIMIT - len(prefix)

        async def notify(text: str) -> None:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

        surface = self.runner.surface(sink, notify, None, explicit=True)
        await self.runner.delivery.deliver(admission, surface)

    async def _ask_in_thread(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        admission: Admission,
    ) -> None:
        persona, question = admission.persona, admission.incoming.text
        header = defuse_mentions(f"**{persona.display_name}** · {question}")[:MESSAGE_LIMIT]
        callback = await interaction.response.send_message(header, allowed_mentions=NO_MENTIONS)
        starter = callback.resource
        if not isinstance(starter, discord.InteractionMessage):
            starter = await interaction.original_response()
        name = " ".join(question.split())[:THREAD_NAME_LIMIT] or persona.display_name
        thread = await starter.create_thread(name=name)
        guild = interaction.guild

        async def sink(snapshot: Persona) -> tuple[DiscordSink, int]:
            return await self.runner.display.sink_for(thread, guild, snapshot, reference=None)

        async def notify(text: str) -> None:
            await ChannelSink(thread, self.runner.retry).send(text)

        surface = self.runner.surface(sink, notify, thread, explicit=True)
        in_thread = admission.at(f"thread:{thread.id}", message_id=str(starter.id))
        await self.runner.delivery.deliver(in_thread, surface)

    async def persona_list(self, interaction: discord.Interaction) -> None:
        personas = self.registry.personas()
        if not personas:
            await ephemeral(interaction, notices.NO_PERSONAS)
            return
        lines = [
            f"• **{p.display_name}** (`{p.id}`)" + (f": {p.description}" if p.description else "")
            for p in personas
        ]
        lines.append("Ask with `/ask`, or @mention me and start with `name:`.")
        await ephemeral(interaction, defuse_mentions("\n".join(lines))[:LIST_LIMIT])

    async def persona_info(self, interaction: discord.Interaction, name: str) -> None:
        persona = self.find(name)
        if persona is None:
            await ephemeral(interaction, notices.NO_SUCH_PERSONA)
            return
        embed = discord.Embed(title=persona.display_name, description=persona.description or None)
        fields = {
            "Suggested questions": "\n".join(f"• {s}" for s in persona.starters),
            "Knowledge": ", ".join(persona.knowledge),
            "Answers in": " ".join(f"<#{c}>" for c in persona.discord_channels),
        }
        for title, value in fields.items():
            if value:
                embed.add_field(name=title, value=value[:EMBED_FIELD_LIMIT], inline=False)
        cites = " · cites its sources" if persona.citations else ""
        embed.set_footer(text=f"id: {persona.id}{cites}")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def reset(self, interaction: discord.Interaction) -> None:
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            place = f"thread:{channel.id}"
        elif interaction.guild is None and channel is not None:
            place = f"dm:{channel.id}"
        else:
            await ephemeral(interaction, RESET_CHAINS)
            return
        forgotten = await self.runner.delivery.service.reset(PLATFORM, place)
        await ephemeral(interaction, f"Done: I forgot this conversation ({forgotten} messages).")

    def persona_choices(self, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.lower()
        return [
            app_commands.Choice(name=f"{p.display_name} ({p.id})"[:CHOICE_NAME_LIMIT], value=p.id)
            for p in self.registry.personas()
            if wanted in p.id.lower() or wanted in p.display_name.lower()
        ][:CHOICES_LIMIT]

    def starter_choices(self, persona: str | None, current: str) -> list[app_commands.Choice[str]]:
        """The persona's starters (its suggested questions) matching what is typed so far."""
        chosen = self.find(persona or self.runner.default_persona)
        if chosen is None:
            personas = self.registry.personas()
            chosen = personas[0] if personas else None
        wanted = current.lower()
        return [
            app_commands.Choice(name=s[:CHOICE_NAME_LIMIT], value=s[:CHOICE_NAME_LIMIT])
            for s in (chosen.starters if chosen else ())
            if wanted in s.lower()
        ][:CHOICES_LIMIT]

    async def failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.error("slash command failed", exc_info=error)
        try:
            await ephemeral(interaction, notices.FAILED)
        except (discord.HTTPException, aiohttp.ClientError):
            log.debug("could not tell the user about the failure", exc_info=True)

    def find(self, name: str) -> Persona | None:
        """A persona by id or display name, any case."""
        wanted = name.strip().lower()
        for persona in self.registry.personas():
            if wanted in (persona.id.lower(), persona.display_name.lower()):
                return persona
        return None


class PersonaCommandTree(app_commands.CommandTree[discord.Client]):
    """The command tree, with the replay check and the error reply."""

    def __init__(self, client: discord.Client, commands: SlashCommands) -> None:
        super().__init__(client)
        self.commands = commands

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await self.commands.admit(interaction)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        await self.commands.failed(interaction, error)


class PersonaGroup(app_commands.Group):
    """`/persona list` and `/persona info NAME`."""

    def __init__(self, commands: SlashCommands) -> None:
        super().__init__(name="persona", description="The personas you can talk to")
        self.handlers = commands

    @app_commands.command(name="list", description="List the personas")
    async def list_personas(self, interaction: discord.Interaction) -> None:
        await self.handlers.persona_list(interaction)

    @app_commands.command(name="info", description="What a persona knows and what to ask it")
    @app_commands.describe(name="The persona")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        await self.handlers.persona_info(interaction, name)

    @info.autocomplete("name")
    async def info_name(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return self.handlers.persona_choices(current)


def build_tree(client: discord.Client, commands: SlashCommands) -> PersonaCommandTree:
    """The bot's command tree (`sync()` publishes it)."""
    tree = PersonaCommandTree(client, commands)
    Choices = list[app_commands.Choice[str]]

    @tree.command(name="ask", description="Ask a persona a question")
    @app_commands.describe(
        question="What you want to know",
        persona="Who answers (default: this channel's persona, or the default one)",
        thread="Open a thread for a longer exchange",
        private="Answer so only you see it (it may then use documents restricted to you)",
    )
    async def ask(
        interaction: discord.Interaction,
        question: app_commands.Range[str, 1, QUESTION_MAX],
        persona: str | None = None,
        thread: bool = False,
        private: bool = False,
    ) -> None:
        await commands.ask(interaction, question, persona, thread, private)

    @ask.autocomplete("persona")
    async def ask_persona(interaction: discord.Interaction, current: str) -> Choices:
        return commands.persona_choices(current)

    @ask.autocomplete("question")
    async def ask_question(interaction: discord.Interaction, current: str) -> Choices:
        chosen = getattr(interaction.namespace, "persona", None)
        return commands.starter_choices(chosen if isinstance(chosen, str) else None, current)

    tree.add_command(PersonaGroup(commands))

    @tree.command(name="reset", description="Forget this conversation (this thread or DM)")
    async def reset(interaction: discord.Interaction) -> None:
        await commands.reset(interaction)

    return tree


async def ephemeral(interaction: discord.Interaction, text: str) -> None:
    """A short answer only the user sees (a follow-up if the response is already used)."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def reader_of(user: discord.User | discord.Member, guild: discord.Guild | None) -> Reader:
    """Who reads an answer to `user`: the user alone (with their roles) outside a guild or in a
    private answer (`guild` None), else everyone who can read the guild channel (Discord's
    permission overwrites are not read: unsure means everyone)."""
    if guild is None:
        return Reader.alone(PLATFORM, str(user.id), member_roles(user))
    return Reader(PLATFORM)


def member_roles(user: discord.User | discord.Member) -> tuple[str, ...]:
    """Role ids and names, for persona `access.roles` (either form works)."""
    if not isinstance(user, discord.Member):
        return ()
    roles = [r for r in user.roles if not r.is_default()]
    return tuple(str(r.id) for r in roles) + tuple(r.name for r in roles)
