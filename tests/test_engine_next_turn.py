"""The batched engine prepares a conversation's next turn while idle, and pads small decodes deep
in a context onto llama.cpp's tiled attention: on the real embedded model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from bots.engine.base import ChatMessage, GenerationRequest
from bots.engine.batched import BatchedEngine
from bots.engine.batched.next_turn import next_turn_messages
from bots.engine.batched.padding import PAD_FROM_WORK, TILE_TOKENS, decode_padded, pad_count
from bots.engine.llama_native import Batch, NativeContext, NativeModel, Sampler, Sampling
from bots.engine.model_files import default_model_path
from tests.conftest import MakeEngine
from tests.fakes.engines import collect, usage

SYSTEM = (
    "You are Pip, the pirate captain of the good ship Marmalade. You always talk like a pirate, "
    "call everyone 'matey', and keep your answers short. You have sailed the seven seas for "
    "forty years and you keep a parrot named Biscuit."
)
DOCS = (
    'Reference documents:\n<document source="ship.md">\nThe Marmalade has three masts, a '
    "crew of twelve and a cook named Hob who makes plum duff on Sundays.\n</document>\n\n"
)
FIRST, SECOND = "How many masts has your ship?", "Who cooks on board?"


def first_turn(remembered: bool) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", DOCS + "Question: " + FIRST)),
        max_tokens=24,
        temperature=0.0,
        remembered_as=FIRST if remembered else None,
    )


def follow_up(answer: str) -> GenerationRequest:
    return GenerationRequest(
        messages=(
            ChatMessage("system", SYSTEM),
            ChatMessage("user", FIRST),
            ChatMessage("assistant", answer),
            ChatMessage("user", DOCS + "Question: " + SECOND),
        ),
        max_tokens=24,
        temperature=0.0,
    )


async def prepared(engine: BatchedEngine, count: int, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while f"next turns prepared: {count} " not in engine.status().detail:
        assert time.monotonic() < deadline, engine.status().detail
        await asyncio.sleep(0.05)


async def test_a_follow_up_finds_its_history_prepared_and_answers_the_same(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(parallel=2)
    answer, _ = await collect(engine, first_turn(remembered=True))
    await prepared(engine, 1)
    history = engine.count_tokens(SYSTEM + FIRST + answer)
    text, last = await collect(engine, follow_up(answer))
    # The history (with the answer) came from the cache: only the documents and question are new.
    assert usage(last).cached_tokens >= history

    plain = await make_engine(parallel=2)
    same_answer, _ = await collect(plain, first_turn(remembered=False))
    assert same_answer == answer
    plain_text, plain_last = await collect(plain, follow_up(answer))
    assert "next turns prepared: 0 " in plain.status().detail
    assert usage(plain_last).cached_tokens < history  # the answer was evaluated again
    assert plain_text == text


async def test_a_request_that_comes_at_once_is_not_kept_waiting_by_a_preparation(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(parallel=2)
    answer, _ = await collect(engine, first_turn(remembered=True))
    _, last = await collect(engine, follow_up(answer))  # sent at once: within the grace time
    assert "next turns prepared: 0 " in engine.status().detail
    # The follow-up replaced the waiting preparation of its own conversation.
    assert usage(last).queue_ms < 250


def test_next_turn_messages_need_the_remembered_question_and_the_cache() -> None:
    request = first_turn(remembered=True)
    assert next_turn_messages(request, "Three, matey!") == (
        ChatMessage("system", SYSTEM),
        ChatMessage("user", FIRST),
        ChatMessage("assistant", "Three, matey!"),
    )
    assert next_turn_messages(first_turn(remembered=False), "Three") is None
    fresh = GenerationRequest(messages=request.messages, remembered_as=FIRST, reuse_cache=False)
    assert next_turn_messages(fresh, "Three") is None
    assert next_turn_messages(request, "  ") is None


# -- padding.py ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_context() -> Iterator[tuple[NativeModel, NativeContext, np.ndarray]]:
    model = NativeModel(default_model_path())
    ctx = NativeContext(model, kv_cells=2048, n_seq_max=3, n_threads=1, n_batch=512, n_ubatch=512)
    tokens = model.tokenize("The crew of the Marmalade sings while it works. " * 80)
    yield model, ctx, tokens
    ctx.close()
    model.close()


def test_only_small_batches_that_attend_to_many_cells_are_padded() -> None:
    batch = Batch(512)
    tokens = np.arange(40, dtype=np.int32)
    batch.add(tokens, 10, 0, logits_last=True)  # shallow: 40 tokens near the start
    assert pad_count(batch) == 0
    batch.clear()
    batch.add(tokens, 1000, 0, logits_last=True)  # 40 tokens attending to ~1,000 cells each
    assert PAD_FROM_WORK <= 40 * 1000
    assert pad_count(batch) == TILE_TOKENS - 40
    batch.clear()
    batch.add(np.arange(TILE_TOKENS, dtype=np.int32), 1000, 0, logits_last=True)
    assert pad_count(batch) == 0  # on the tiled path already


def test_a_padded_decode_leaves_no_padding_and_gives_the_same_next_token(
    deep_context: tuple[NativeModel, NativeContext, np.ndarray],
) -> None:
    model, ctx, tokens = deep_context
    depth, k = 600, 40
    batch = Batch(512)
    nexts = []
    for pad_seq in (None, 2):
        ctx.clear()
        for start in range(0, depth, 512):
            batch.clear()
            batch.add(tokens[start : min(depth, start + 512)], start, 0, logits_last=False)
            assert ctx.decode(batch) == 0
        batch.clear()
        last = batch.add(tokens[depth : depth + k], depth, 0, logits_last=True)
        assert pad_count(batch) > 0
        assert decode_padded(ctx, batch, pad_seq) == 0
        assert batch.n == k
        assert ctx.seq_pos_max(2) == -1  # the padding's cells are gone
        assert ctx.seq_pos_max(0) == depth + k - 1
        greedy = Sampler(model, Sampling(0.0, 1.0, 0, 1.0, None))
        nexts.append(greedy.sample(ctx, last))
        greedy.close()
    assert nexts[0] == nexts[1]
