"""From a built prompt to the engine: the request's sampling settings, and its stream primed.

The service decides whether to generate at all; this module only says how to ask the engine
and hands back a stream that has already produced its first piece, so that a full queue or a
failed start shows before any turn is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from bots.chat.model import Incoming
from bots.chat.prompt import BuiltPrompt, engine_adapter
from bots.engine.base import GenerationRequest, Piece
from bots.persona.model import Persona
from bots.settings import ModelSettings


def generation_request(
    incoming: Incoming,
    persona: Persona,
    prompt: BuiltPrompt,
    model: ModelSettings,
    max_tokens: int,
) -> GenerationRequest:
    """The request for one reply: each sampling setting from the message, else the persona,
    else the settings."""
    temperature = incoming.temperature
    if temperature is None:
        temperature = persona.sampling.temperature
    return GenerationRequest(
        messages=prompt.messages,
        max_tokens=max_tokens,
        temperature=model.temperature if temperature is None else temperature,
        top_p=persona.sampling.top_p or model.top_p,
        repeat_penalty=persona.sampling.repeat_penalty or model.repeat_penalty,
        seed=incoming.seed,
        timeout_s=model.timeout_s,
        reuse_cache=not incoming.fresh,
        adapter=engine_adapter(persona),
        remembered_as=incoming.text,  # as the store keeps the user turn
    )


async def primed(
    stream: AsyncIterator[Piece], on_wait: Callable[[int], None] | None
) -> AsyncIterator[Piece]:
    """`stream` from its first generated piece on, after waiting out the queue ahead of it.

    While other replies are ahead, `on_wait` hears how many, each time that changes. Whatever
    the stream raises before its first piece (EngineBusy for a full queue) is raised here,
    with the stream closed, so a caller that gives up while waiting frees the engine.
    """
    try:
        first = await stream.__anext__()
        while first.ahead is not None:
            if on_wait is not None:
                on_wait(first.ahead)
            first = await stream.__anext__()
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    return _prepend(first, stream)


async def _prepend(first: Piece, rest: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    try:
        yield first
        if first.finish_reason is None:
            async for piece in rest:
                yield piece
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
