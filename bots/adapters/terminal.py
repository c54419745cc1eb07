"""Terminal chat: `bots chat [PERSONA]`, streaming to stdout, with a few slash commands."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from typing import TextIO

from bots.chat import notices
from bots.chat.model import ChatRefused, Incoming
from bots.chat.reply import Reply
from bots.engine.base import EngineError
from bots.knowledge.audience import OPERATOR
from bots.runtime import Runtime

log = logging.getLogger(__name__)

HELP = "/persona NAME switch persona · /reset forget this chat · /sources last sources · /quit"


class TerminalChat:
    """A read-eval-print loop over the chat service; history is kept in the store per persona."""

    def __init__(self, app: Runtime, persona_id: str, out: TextIO = sys.stdout) -> None:
        self.app = app
        self.persona_id = persona_id
        self.out = out
        self.user = getpass.getuser()
        self.last: Reply | None = None

    @property
    def place(self) -> str:
        return f"{self.user}/{self.persona_id}"

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def run(self) -> None:
        persona = self.app.service.persona(self.persona_id)
        self.say(f"{persona.display_name} ({persona.id}) · {HELP}")
        if persona.greeting:
            self.say(f"{persona.display_name}: {persona.greeting}")
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self.command(line):
                    return
                continue
            await self.ask(line)

    async def command(self, line: str) -> bool:
        """Handle a slash command; False means quit."""
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            await self.app.service.reset("terminal", self.place)
            self.say("(history cleared)")
        elif name == "/persona":
            arg = arg.strip()
            if not arg:
                self.say("personas: " + ", ".join(p.id for p in self.app.registry.personas()))
            elif self.app.registry.get(arg) is None:
                self.say(
                    f"(no persona {arg!r}; have: "
                    + ", ".join(p.id for p in self.app.registry.personas())
                    + ")"
                )
            else:
                self.persona_id = arg
                persona = self.app.service.persona(arg)
                self.say(f"(now talking to {persona.display_name})")
                if persona.greeting:
                    self.say(f"{persona.display_name}: {persona.greeting}")
        elif name == "/sources":
            if self.last is None or not self.last.sources:
                self.say("(no sources for the last answer)")
            for hit in self.last.sources if self.last else ():
                self.say(f"  {hit.score:.2f}  {hit.path}  {hit.heading or hit.title}")
        else:
            self.say(HELP)
        return True

    async def ask(self, text: str) -> None:
        incoming = Incoming(
            "terminal", self.place, self.user, text, self.persona_id, reader=OPERATOR
        )
        try:
            reply = await self.app.service.start(incoming)
        except ChatRefused as refused:
            self.say(f"({refused.user_message})")
            return
        except EngineError as exc:
            log.error("the engine failed to start a reply: %s", exc)
            self.say(f"({notices.FAILED})")
            return
        self.last = reply
        self.say(f"{reply.persona.display_name}: ", end="")
        try:
            async for piece in reply:
                self.say(piece, end="")
        except EngineError:
            log.exception("the engine failed mid-reply")
            self.say(f" {notices.CUT_SHORT}", end="")
        self.say()
