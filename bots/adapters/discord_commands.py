"""The Discord slash commands: `/ask`, `/persona list`, `/persona info`, `/reset`.

Declared with discord.py's `app_commands` and synced on start; the work is done by the adapter
(`CommandHandler`), so this module only says what the commands look like to a Discord user.
"""

from __future__ import annotations

from typing import Protocol

import discord
from discord import app_commands

QUESTION_MAX = 4000


class CommandHandler(Protocol):
    """What the commands call; implemented by the Discord adapter."""

    async def admit(self, interaction: discord.Interaction) -> bool:
        """False for an interaction already answered (a gateway replay) or while stopping."""

    async def ask(
        self, interaction: discord.Interaction, question: str, persona: str | None, thread: bool
    ) -> None: ...

    async def persona_list(self, interaction: discord.Interaction) -> None: ...

    async def persona_info(self, interaction: discord.Interaction, name: str) -> None: ...

    async def reset(self, interaction: discord.Interaction) -> None: ...

    def persona_choices(self, current: str) -> list[app_commands.Choice[str]]: ...

    def starter_choices(
        self, persona: str | None, current: str
    ) -> list[app_commands.Choice[str]]: ...

    async def command_failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None: ...


class PersonaCommandTree(app_commands.CommandTree[discord.Client]):
    """The command tree, with the adapter's replay check and error reply."""

    def __init__(self, client: discord.Client, handler: CommandHandler) -> None:
        super().__init__(client)
        self.handler = handler

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await self.handler.admit(interaction)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        await self.handler.command_failed(interaction, error)


def build_tree(client: discord.Client, handler: CommandHandler) -> PersonaCommandTree:
    """The command tree of the bot (call `sync()` to publish it)."""
    tree = PersonaCommandTree(client, handler)

    @tree.command(name="ask", description="Ask a persona a question")
    @app_commands.describe(
        question="What you want to know",
        persona="Who answers (default: this channel's persona, or the default one)",
        thread="Open a thread for a longer exchange",
    )
    async def ask(
        interaction: discord.Interaction,
        question: app_commands.Range[str, 1, QUESTION_MAX],
        persona: str | None = None,
        thread: bool = False,
    ) -> None:
        await handler.ask(interaction, question, persona, thread)

    @ask.autocomplete("persona")
    async def ask_persona(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return handler.persona_choices(current)

    @ask.autocomplete("question")
    async def ask_question(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        chosen = getattr(interaction.namespace, "persona", None)
        return handler.starter_choices(chosen if isinstance(chosen, str) else None, current)

    group = app_commands.Group(name="persona", description="The personas you can talk to")

    @group.command(name="list", description="List the personas")
    async def persona_list(interaction: discord.Interaction) -> None:
        await handler.persona_list(interaction)

    @group.command(name="info", description="What a persona knows and what to ask it")
    @app_commands.describe(name="The persona")
    async def persona_info(interaction: discord.Interaction, name: str) -> None:
        await handler.persona_info(interaction, name)

    @persona_info.autocomplete("name")
    async def info_name(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return handler.persona_choices(current)

    tree.add_command(group)

    @tree.command(name="reset", description="Forget this conversation (this thread or DM)")
    async def reset(interaction: discord.Interaction) -> None:
        await handler.reset(interaction)

    return tree
