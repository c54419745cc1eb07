"""`bots ask` against raw llama-cpp-python on the same prompt, in the same run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bots.chat.model import Incoming
from bots.chat.reply import Reply
from bots.engine.local import served_model_path
from bots.engine.model_files import resolve_model_path, without_extra_buffers
from bots.knowledge.audience import OPERATOR
from bots.runtime import Runtime
from bots.settings import Settings

MAX_TOKENS = 128


@dataclass(frozen=True)
class AskRun:
    """One generation: prompt size, time to first token, generation speed."""

    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_s: float


async def answer(
    app: Runtime, persona_id: str, question: str, *, max_tokens: int, seed: int | None = None
) -> Reply:
    """One greedy, unremembered reply through the whole bots pipeline, read to the end."""
    incoming = Incoming(
        "bench",
        "",
        "bench",
        question,
        persona_id,
        remember=False,
        temperature=0.0,
        max_tokens=max_tokens,
        seed=seed,
        reader=OPERATOR,
    )
    reply = await app.service.start(incoming)
    async for _ in reply:
        pass
    return reply


async def bench_ask(settings: Settings, persona_id: str, question: str) -> tuple[AskRun, AskRun]:
    """Time the question through the bots pipeline, then the same messages through raw `Llama`."""
    app = Runtime.create(settings)
    await app.start(watch=False)
    try:
        reply = await answer(app, persona_id, question, max_tokens=MAX_TOKENS)
        assert reply.usage is not None and reply.prompt is not None
        ours = AskRun(
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
            reply.usage.ttft_ms,
            reply.usage.tokens_per_s,
        )
        messages = [{"role": m.role, "content": m.content} for m in reply.prompt.messages]
    finally:
        await app.close()
    return ours, _raw(settings, messages)


def _raw(settings: Settings, messages: list[dict[str, str]]) -> AskRun:
    from llama_cpp import Llama

    threads = settings.model.n_threads or os.cpu_count() or 1
    # The same file bots serves (the Q8_0 copy on a CPU, when model.quantize_q8).
    model = served_model_path(settings, resolve_model_path(settings.model.path or None), threads)
    with without_extra_buffers():
        llm = Llama(
            str(model),
            n_ctx=settings.model.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    for chunk in llm.create_chat_completion(
        messages,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        repeat_penalty=settings.model.repeat_penalty,
        stream=True,
    ):
        if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index, union-attr]
            first = first or time.perf_counter()
            tokens += 1
    end = time.perf_counter()
    prompt = int(llm.n_tokens) - tokens
    return AskRun(
        prompt, tokens, (first - started) * 1000, tokens / (end - first) if end > first else 0
    )
