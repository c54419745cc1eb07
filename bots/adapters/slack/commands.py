"""Slack slash commands: `/ask [persona] question` and `/persona list|info NAME`.

`/ask` is acknowledged at once; the question is posted in the channel and answered in a thread
under it through the shared reply lifecycle, or privately through the command's `response_url`
where the bot is not a member of the channel. A refusal (access, rate limit) is private.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError

from bots.adapters.slack.events import CHANNEL_ID, USER_ID
from bots.adapters.slack.format import defuse_broadcasts, escape, from_mrkdwn
from bots.adapters.slack.messages import PLATFORM, SlackMessages
from bots.adapters.slack.reply import error_code
from bots.adapters.slack.surface import RespondSurface, SlackSurface
from bots.adapters.slack.views import persona_info, persona_list
from bots.chat import notices
from bots.chat.model import ChatRefused, Incoming
from bots.chat.router import route
from bots.knowledge.audience import Reader
from bots.persona.model import Persona

log = logging.getLogger(__name__)

ASK_USAGE = "Usage: `/ask [persona] question`, e.g. `/ask tutor What is a monad?`"
PERSONA_USAGE = "Usage: `/persona list` or `/persona info NAME`"

Respond = Callable[..., Awaitable[Any]]


class SlackCommands:
    """The handlers behind the commands; they answer through the message side's parts."""

    def __init__(self, messages: SlackMessages) -> None:
        self.messages = messages
        self.registry = messages.registry
        self.delivery = messages.delivery

    async def ask(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        """`/ask [persona] question`: acknowledged at once; the answer follows in a thread."""
        await ack()
        channel, user = command.get("channel_id"), command.get("user_id")
        text = command.get("text")
        if not (isinstance(channel, str) and CHANNEL_ID.match(channel)):
            return
        if not (isinstance(user, str) and USER_ID.match(user) and isinstance(text, str)):
            return
        if not self.messages.accepting():
            await respond(text=escape(notices.SHUTTING_DOWN))
            return
        team = command.get("team_id") if isinstance(command.get("team_id"), str) else ""
        if not self.delivery.service.place_allowed(channel_id=channel, team_id=str(team)):
            await respond(text=escape(notices.NOT_HERE))
            return
        persona, question = self._target(from_mrkdwn(text), channel)
        if persona is None or not question:
            await respond(text=notices.NO_PERSONAS if persona is None and question else ASK_USAGE)
            return
        # The answer goes in a thread of the channel: whoever reads the channel reads it.
        reader = await self.messages.audience.reader(
            channel, user, bot_user=self.messages.bot_user_id
        )
        try:
            admission = await self.delivery.admit(
                Incoming(PLATFORM, "", user, question, persona.id, reader=reader)
            )
        except ChatRefused as refused:
            await respond(text=escape(refused.user_message))
            return
        async with self.messages.tracked():
            asker = command.get("user_name")
            shown = defuse_broadcasts(escape(question))
            header = (
                f"_/ask from {escape(asker if isinstance(asker, str) else 'someone')}:_ {shown}"
            )
            place = self.messages.place
            try:
                root = await place.poster.post(channel, header, identity=place.identity(persona))
            except SlackApiError as exc:
                # Not a member of the channel: answer privately through the command's response_url.
                log.info("slack: /ask in %s answered privately (%s)", channel, error_code(exc))
                private = admission.at(
                    f"{channel}:/ask:{user}", reader=Reader.alone(PLATFORM, user)
                )
                await self.delivery.deliver(private, RespondSurface(respond))
                return
            thread = f"{channel}:{root}"
            self.messages.joined(thread)
            recipient = None if channel.startswith("D") else (user, team or self.messages.team_id)
            surface = SlackSurface(place, channel, root, root, user, recipient)
            await self.delivery.deliver(admission.at(thread, message_id=thread), surface)

    def _target(self, text: str, channel: str) -> tuple[Persona | None, str]:
        """`/ask tutor question`, `/ask tutor: question`, or the channel's/default persona."""
        personas = self.registry.personas()
        first, _, rest = text.strip().partition(" ")
        named = first.rstrip(":,").lower()
        for persona in personas:
            if rest.strip() and named in (persona.id, persona.display_name.lower()):
                return persona, rest.strip()
        chosen = route(
            personas,
            text,
            platform=PLATFORM,
            channel_id=channel,
            default=self.messages.default_persona,
        )
        fallback = self.registry.get(chosen.persona_id) if chosen.persona_id else None
        return fallback, chosen.text

    async def persona(self, ack: Callable[..., Awaitable[None]], command: dict[str, Any]) -> None:
        """`/persona list` and `/persona info NAME`, answered in the acknowledgement itself."""
        text = command.get("text") if isinstance(command.get("text"), str) else ""
        words = str(text).split()
        personas = self.registry.personas()
        if not words or words[0].lower() == "list":
            await ack(text=persona_list(personas))
        elif words[0].lower() == "info" and len(words) > 1:
            wanted = " ".join(words[1:]).lower()
            found = [p for p in personas if wanted in (p.id, p.display_name.lower())]
            await ack(
                text=persona_info(found[0])
                if found
                else f"No persona named `{escape(wanted)}`; `/persona list` shows them."
            )
        else:
            await ack(text=PERSONA_USAGE)
