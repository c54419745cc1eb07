"""Prompt-lookup speculation in the batched engine: a reply is the same token for token as without
it, the draft cells the model rejected leave the KV cache, and a quoting reply really is drafted.

Each test compares an engine with speculation on against one with it off on the same requests
(greedy, or sampled with a seed: the sampler chain draws once per token either way). The
requests are short and the caches small, so the attention kernels of both runs coincide (see
tests/test_engine_batched.py): a difference would be a wrong draft kept, not rounding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from bots.engine.base import ChatMessage, EngineTimeout, GenerationRequest, Piece
from bots.engine.batched import BatchedEngine, Speculation, kv
from bots.engine.batched.scheduler import Scheduler
from bots.engine.batched.speculation import DRAFT_MIN, MAX_BACKOFF, NGRAM, Drafter
from bots.engine.model_files import default_model_path
from bots.settings import SettingsError, load_settings
from tests.conftest import ENGINE_KV_CELLS, ENGINE_N_CTX, MakeEngine
from tests.fakes.engines import collect, usage

HANDBOOK = (
    "You are the Acme handbook assistant. Answer from the handbook text below.\n\nHandbook:\n"
    "Returns policy. Customers may return any unopened item within thirty days of delivery for "
    "a full refund. Opened items can be returned within fourteen days if they are in their "
    "original packaging, and a restocking fee of ten percent applies. Refunds are issued to the "
    "original payment method within five business days after the warehouse receives the item. "
    "Gift cards and final-sale items cannot be returned."
)
PIRATE = "You are Pip, the pirate captain of the good ship Marmalade. You talk like a pirate."
EDITED = HANDBOOK.replace("thirty days", "sixty days").replace("ten percent", "five percent")
QUOTE = "Quote the returns policy paragraph verbatim."
POEM = "Write a short poem about the sea."
OTHERS = ("What is a restocking fee?", "Can I return a gift card?", "Hello!")
OFF = Speculation("off")
REPLY_TOKENS = 80


def chat(system: str, question: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", system), ChatMessage("user", question))


def request(system: str, question: str, **kw: object) -> GenerationRequest:
    kw.setdefault("max_tokens", REPLY_TOKENS)
    kw.setdefault("temperature", 0.0)
    kw.setdefault("repeat_penalty", 1.0)
    return GenerationRequest(messages=chat(system, question), **kw)  # type: ignore[arg-type]


def scheduler(engine: BatchedEngine) -> Scheduler:
    assert engine._scheduler is not None
    return engine._scheduler


# The tests that only check what one speculating engine does to itself (a timeout, rejected
# drafts) share one, in the module's event loop; the tests that compare replies with speculation
# off start fresh engines, so that both sides begin from the same empty cache.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speculating() -> AsyncIterator[BatchedEngine]:
    """One n-gram speculating engine for the module."""
    engine = BatchedEngine(
        default_model_path(),
        speculation=Speculation("ngram"),
        n_ctx=ENGINE_N_CTX,
        kv_cells=ENGINE_KV_CELLS,
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def replies(engine: BatchedEngine, reqs: list[GenerationRequest]) -> list[str]:
    return [text for text, _ in [await collect(engine, r) for r in reqs]]


# -- the same replies --------------------------------------------------------------------------


async def test_a_quoting_reply_is_drafted_and_the_same_token_for_token(
    make_engine: MakeEngine,
) -> None:
    quote = request(HANDBOOK, QUOTE)
    plain, plain_last = await collect(await make_engine(speculation=OFF), quote)
    engine = await make_engine()
    drafted, last = await collect(engine, quote)
    assert drafted == plain
    assert usage(last).completion_tokens == usage(plain_last).completion_tokens
    assert scheduler(engine).accepted > 0, "speculation never ran: this test would prove nothing"
    assert scheduler(engine).odds.cost(1) > 0, "the steps were timed: drafts are weighed"
    assert "n-gram drafts:" in engine.status().detail


async def test_rejected_drafts_are_rolled_back_and_the_reply_goes_on_the_same(
    make_engine: MakeEngine,
) -> None:
    reqs = [request(HANDBOOK, POEM), request(HANDBOOK, "Summarise the handbook.")]
    expected = await replies(await make_engine(speculation=OFF), reqs)
    engine = await make_engine()
    assert await replies(engine, reqs) == expected
    spec = scheduler(engine)
    assert 0 < spec.accepted < spec.drafted, "drafts were partly rejected"


async def test_concurrent_sequences_agree_with_speculation_off(make_engine: MakeEngine) -> None:
    # Bit for bit only as far as llama.cpp's cell order allows: the cells of a rejected draft
    # are freed at once and the other sequences' next tokens may take them, so their attention
    # sums cells in another order, as after a finished sequence leaves the cache (see
    # test_engine_batched.py, cancelling). The replies agree until that rounding flips a near
    # tie, and run to the same end.
    reqs = [request(HANDBOOK, QUOTE, max_tokens=60), request(PIRATE, POEM, max_tokens=60)]
    reqs += [request(HANDBOOK, q, max_tokens=40) for q in OTHERS]

    async def together(engine: BatchedEngine) -> list[tuple[str, Piece]]:
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    expected = await together(await make_engine(speculation=OFF))
    # Drafts in every step, however many streams it holds: this checks drafting beside others.
    engine = await make_engine(speculation=Speculation(max_streams=len(reqs)))
    results = await together(engine)
    for (text, last), (expected_text, expected_last) in zip(results, expected, strict=True):
        assert text[:12] == expected_text[:12]
        assert last.finish_reason == expected_last.finish_reason
    assert scheduler(engine).accepted > 0


async def test_steps_of_more_streams_than_max_streams_draft_nothing(
    make_engine: MakeEngine,
) -> None:
    # Two requests admitted together, whose prompts fit one batch, start streaming in the same
    # step; neither stops before its max_tokens, so every step of theirs holds both streams.
    pair = [request(HANDBOOK, QUOTE, max_tokens=16), request(HANDBOOK, QUOTE, max_tokens=16)]

    async def drafted(max_streams: int) -> int:
        engine = await make_engine(speculation=Speculation(max_streams=max_streams))
        results = await asyncio.gather(*(collect(engine, r) for r in pair))
        assert [usage(last).completion_tokens for _, last in results] == [16, 16]
        return scheduler(engine).drafted

    assert await drafted(2) > 0, "the pair drafts when allowed: the check below would prove nothing"
    assert await drafted(1) == 0


async def test_a_sampled_reply_with_a_seed_is_the_same(make_engine: MakeEngine) -> None:
    reqs = [request(HANDBOOK, QUOTE, temperature=0.7, seed=11, repeat_penalty=1.15)]
    reqs.append(request(HANDBOOK, POEM, temperature=0.3, seed=3, top_k=40, top_p=0.9))
    expected = await replies(await make_engine(speculation=OFF), reqs)
    engine = await make_engine()
    assert await replies(engine, reqs) == expected
    assert scheduler(engine).drafted > 0


async def test_stop_strings_and_max_tokens_inside_an_accepted_draft(
    make_engine: MakeEngine,
) -> None:
    reference = await make_engine(speculation=OFF)
    full, _ = await collect(reference, request(HANDBOOK, QUOTE))
    words = full.split()
    stop = words[len(words) // 2]
    reqs = [
        request(HANDBOOK, QUOTE, stop=(stop,)),
        request(HANDBOOK, QUOTE, max_tokens=23),
        request(HANDBOOK, QUOTE, max_tokens=41),
    ]
    engine = await make_engine()
    assert (await collect(engine, request(HANDBOOK, QUOTE)))[0] == full
    for req in reqs:  # both engines now answer from the same cached conversation
        expected, expected_last = await collect(reference, req)
        text, last = await collect(engine, req)
        assert text == expected
        assert last.finish_reason == expected_last.finish_reason
        assert usage(last).completion_tokens == usage(expected_last).completion_tokens
    assert usage(last).completion_tokens == 41
    assert stop not in text and scheduler(engine).accepted > 0


async def test_a_persona_reload_is_answered_from_the_new_text(make_engine: MakeEngine) -> None:
    expected, _ = await collect(await make_engine(speculation=OFF), request(EDITED, QUOTE))
    before, _ = await collect(await make_engine(speculation=OFF), request(HANDBOOK, QUOTE))
    assert expected != before, "the edit must change the reply, or this test proves nothing"
    engine = await make_engine()
    assert (await collect(engine, request(HANDBOOK, QUOTE)))[0] == before
    after, last = await collect(engine, request(EDITED, QUOTE))
    assert after == expected
    assert usage(last).cached_tokens > 0, "the persona's unchanged start came from the cache"


# -- cancellation, timeouts and the KV cache ---------------------------------------------------


async def wait_idle(engine: BatchedEngine, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.status().active:
        assert time.monotonic() < deadline, "a cancelled sequence went on generating"
        await asyncio.sleep(0.02)


def assert_cells_match_entries(engine: BatchedEngine) -> None:
    """Every sequence holds exactly the cells its table entry says, none past its end."""
    sched = scheduler(engine)
    held = {entry.seq_id: len(entry.tokens) for entry in sched.kv.table.entries}
    for seq_id in range(engine._n_seq_max):
        assert sched.ctx.seq_pos_max(seq_id) == held.get(seq_id, 0) - 1, seq_id


async def test_cancelling_mid_draft_ends_the_stream_and_keeps_the_cache_consistent(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "HOT_IDLE_TOKENS", 10**9)  # idle sequences stay to be checked
    engine = await make_engine()
    stream = engine.stream(request(HANDBOOK, QUOTE, max_tokens=400))
    async for piece in stream:
        if piece.text and scheduler(engine).accepted:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_idle(engine)
    assert_cells_match_entries(engine)
    other = request(PIRATE, POEM)
    expected, _ = await collect(await make_engine(speculation=OFF), other)
    assert (await collect(engine, other))[0] == expected


@pytest.mark.asyncio(loop_scope="module")
async def test_a_timeout_mid_draft_raises_and_the_engine_keeps_serving(
    speculating: BatchedEngine,
) -> None:
    engine = speculating
    with pytest.raises(EngineTimeout):
        await collect(engine, request(HANDBOOK, QUOTE, max_tokens=1000, timeout_s=1.0))
    await wait_idle(engine)
    text, _ = await collect(engine, request(HANDBOOK, "Hello!", max_tokens=8))
    assert text


@pytest.mark.asyncio(loop_scope="module")
async def test_many_rejected_drafts_leave_no_cells_behind(
    speculating: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "HOT_IDLE_TOKENS", 10**9)
    engine = speculating
    spec = scheduler(engine)
    rejected_before = spec.drafted - spec.accepted  # the shared engine's earlier tests
    # Draft whatever the odds say: this is about the cells of rejected drafts, and the odds
    # (measured step times) would decline most drafts of a sampled poem on a slow machine.
    monkeypatch.setattr(spec.odds, "length", lambda match, most, streams=1: most)
    for i in range(6):
        req = request(HANDBOOK, f"{POEM} Number {i}.", temperature=1.0, seed=i, max_tokens=48)
        await collect(engine, req)
        assert_cells_match_entries(engine)
    assert spec.drafted - spec.accepted - rejected_before > 10, "many drafts were rejected"
    monkeypatch.setattr(kv, "HOT_IDLE_TOKENS", 0)
    spec.kv.cool_down()  # the engine thread is idle: nothing else touches the cache now
    for seq_id in range(engine._n_seq_max):
        assert spec.ctx.seq_pos_max(seq_id) == -1, "back to an empty cache"


# -- the drafter alone -------------------------------------------------------------------------


def tokens(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def test_drafter_proposes_what_followed_the_last_ngram_most_recently() -> None:
    drafter = Drafter(tokens(1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 0, 1, 2), draft_max=4)
    assert drafter.draft(10) == []  # (0, 1, 2) never occurred before
    drafter.push(3)
    assert drafter.draft(10) == [7, 8, 0, 1], "the later (1, 2, 3), up to the budget"
    assert drafter.draft(2) == [7, 8]
    drafter.push(6)
    assert drafter.draft(10) == []


def test_drafter_indexes_the_reply_as_it_grows() -> None:
    drafter = Drafter(tokens(5, 6), draft_max=8)
    for token in (1, 2, 3, 4, 1, 2):
        drafter.push(token)
    assert drafter.draft(8) == []  # (4, 1, 2) is new
    drafter.push(3)
    assert drafter.draft(8) == [4, 1, 2, 3], "the reply repeats itself"
    assert NGRAM == 3


def test_drafter_budget_follows_acceptance_and_pauses_after_poor_drafts() -> None:
    drafter = Drafter(np.tile(tokens(1, 2, 3, 4), 20), draft_max=16)
    drafter.budget = 4
    drafter.verified(4, 4)
    assert drafter.budget == 8, "doubled after a full acceptance"
    drafter.verified(8, 5)
    assert drafter.budget == 6 and drafter.draft(16), "a good draft: what was kept, no pause"
    waits = []
    for _ in range(MAX_BACKOFF + 1):
        drafter.verified(6, 2)  # under half kept: a poor draft
        wait = 0
        while not drafter.draft(16):
            wait += 1
        waits.append(wait)
    assert waits == [3, 7, 15, 31, 63, 63]
    assert drafter.budget == 3, "what the last draft kept, and one more"
    drafter.verified(DRAFT_MIN, 1)
    drafter.verified(DRAFT_MIN, 0)
    assert [bool(drafter.draft(16)) for _ in range(4)] == [False] * 3 + [True], "pauses reset"


def test_speculation_is_a_setting(tmp_path) -> None:
    with pytest.raises(SettingsError, match=r"model\.speculation: 'eagle' must be one of"):
        load_settings(tmp_path, environ={"BOTS_MODEL_SPECULATION": "eagle"})
    with pytest.raises(SettingsError, match=r"model\.draft_max"):
        load_settings(tmp_path, environ={"BOTS_MODEL_DRAFT_MAX": "0"})
    settings = load_settings(tmp_path, environ={"BOTS_MODEL_SPECULATION": "off"})
    assert settings.model.speculation == "off" and settings.model.draft_max == 16
