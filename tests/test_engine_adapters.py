"""A LoRA adapter on the shared model: the batched engine serves personas with and without one
side by side, and a persona without one gives exactly the replies it gave before.

The adapter is a real LoRA GGUF for the embedded model (tests/fakes/lora.py: random q and v
deltas, strong enough to change a greedy reply). Greedy decoding makes replies comparable: each
reply in a mixed, concurrent workload must equal the same request run alone on a fresh engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bots.engine.base import Adapter, ChatMessage, EngineError, GenerationRequest, Piece
from bots.engine.batched.prefix_cache import Entry, SequenceTable
from bots.engine.model_files import default_model_path
from bots.engine.simple import SimpleEngine
from tests.conftest import MakeEngine
from tests.fakes.engines import collect
from tests.fakes.lora import write_lora

LIBRARIAN = (
    "You are Ada, the librarian of a small seaside town. You answer in two or three friendly "
    "sentences, you always suggest one book that fits the question, and you mention the shelf "
    "where it stands. You know the town's history, its lighthouse and its fishing boats, and you "
    "like to tell visitors which stories the old sailors still tell in the harbour cafe on "
    "Sunday mornings, when the reading room is closed and the tide is low."
)
GUIDE = (
    "You are Tom, a mountain guide. You answer with short, practical safety advice, you always "
    "ask which trail the person plans to walk, and you remind everyone to carry water and a map. "
    "You have climbed every peak in the valley and you love early starts. You know where the "
    "huts are, which bridges wash away in spring, and how quickly the weather turns above the "
    "tree line in the afternoon."
)
REPLY_TOKENS = 20
SHORT_REPLY_TOKENS = 8


def ask(
    system: str, question: str, adapter: Adapter | None = None, max_tokens: int = REPLY_TOKENS
) -> GenerationRequest:
    messages = (ChatMessage("system", system), ChatMessage("user", question))
    return GenerationRequest(messages, max_tokens=max_tokens, temperature=0.0, adapter=adapter)


def cached(piece: Piece) -> int:
    assert piece.usage is not None
    return piece.usage.cached_tokens


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Adapter:
    path = write_lora(tmp_path_factory.mktemp("lora") / "librarian.gguf")
    return Adapter("librarian@1", str(path))


async def alone(make_engine: MakeEngine, request: GenerationRequest) -> str:
    engine = await make_engine()
    text, _ = await collect(engine, request)
    await engine.close()
    return text


async def test_the_adapter_changes_the_reply_and_without_it_the_reply_is_the_old_one(
    make_engine: MakeEngine, lora: Adapter
) -> None:
    base = ask(LIBRARIAN, "Which book about the sea should I read?")
    tuned = ask(LIBRARIAN, "Which book about the sea should I read?", lora)
    before = await alone(make_engine, base)
    engine = await make_engine()
    with_adapter, _ = await collect(engine, tuned)
    after, _ = await collect(engine, base)
    assert with_adapter != before, "the adapter must change the reply, or this proves nothing"
    assert after == before


async def test_personas_with_and_without_an_adapter_run_together_as_they_run_alone(
    make_engine: MakeEngine, lora: Adapter
) -> None:
    # One request per adapter set: as each set has a decode of its own, each request then runs
    # in exactly the batch shapes it has alone, and its reply must be the same to the bit. (Two
    # requests of one set share decodes, whose other shapes llama.cpp's kernels round
    # differently: tests/test_engine_batched.py.) Had the sets shared a decode, the adapter
    # would change the base persona's reply from its first tokens. Short replies: the other
    # sequence's cells still move these ones elsewhere in the KV cache, which can change the
    # rounding of a long greedy reply late in it (seen under heavy load, where steps interleave
    # differently).
    tuned = ask(LIBRARIAN, "Tell me about the lighthouse.", lora, SHORT_REPLY_TOKENS)
    base = ask(GUIDE, "Is it safe to climb in the rain?", max_tokens=SHORT_REPLY_TOKENS)
    expected = [await alone(make_engine, tuned), await alone(make_engine, base)]
    engine = await make_engine()
    together = await asyncio.gather(collect(engine, tuned), collect(engine, base))
    assert [text for text, _ in together] == expected
    swapped = await asyncio.gather(collect(engine, base), collect(engine, tuned))
    assert [text for text, _ in reversed(swapped)] == expected

    # Interleaved: the base reply starts while the tuned one is streaming, and the other way.
    for first, second in ((tuned, base), (base, tuned)):
        streaming = engine.stream(first)
        head = await anext(streaming)
        later = asyncio.ensure_future(collect(engine, second))
        rest = [piece.text async for piece in streaming]
        texts = {first: head.text + "".join(rest), second: (await later)[0]}
        assert [texts[tuned], texts[base]] == expected
    assert engine._scheduler is not None and engine._scheduler.adapters.loaded == 1


async def test_a_cached_prefix_is_reused_only_under_the_adapter_it_was_computed_with(
    make_engine: MakeEngine, lora: Adapter
) -> None:
    question = "Where is the history shelf?"
    fresh_tuned = await alone(make_engine, ask(LIBRARIAN, question, lora))
    engine = await make_engine()
    await collect(engine, ask(LIBRARIAN, "Good morning!"))
    tuned, last = await collect(engine, ask(LIBRARIAN, question, lora))
    assert cached(last) == 0
    assert tuned == fresh_tuned
    _, base_again = await collect(engine, ask(LIBRARIAN, question))
    assert cached(base_again) > engine.count_tokens(LIBRARIAN)
    _, tuned_again = await collect(engine, ask(LIBRARIAN, "Good evening!", lora))
    assert cached(tuned_again) > engine.count_tokens(LIBRARIAN)


async def test_an_adapter_llama_cpp_refuses_fails_that_request_only(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    wrong = Adapter("other@1", str(write_lora(tmp_path / "wrong.gguf", wrong_base=True)))
    engine = await make_engine()
    with pytest.raises(EngineError, match=r"wrong\.gguf"):
        await collect(engine, ask(GUIDE, "Hello?", wrong))
    text, _ = await collect(engine, ask(GUIDE, "Hello?"))
    assert text.strip()


def test_the_prefix_table_matches_only_entries_of_the_same_adapter() -> None:
    table = SequenceTable(n_seq=4, park_budget_bytes=0)
    tokens = np.arange(40, dtype=np.int32)
    adapter = Adapter("a@1", "/adapters/a/1/adapter.gguf")
    table.put(Entry(0, tokens, "prefix"))
    assert table.best_match(tokens, adapter).length == 0
    assert not table.has_prefix(tokens, adapter)
    assert table.best_match(tokens).length == 40
    table.put(Entry(1, tokens[:30], "prefix", adapter=adapter))
    assert table.best_match(tokens, adapter).entry is table.get(1)
    assert table.persona_prefix_length(tokens, Adapter("a@2", "/elsewhere.gguf")) == 0


async def test_the_simple_engine_refuses_an_adapter_by_name(lora: Adapter) -> None:
    engine = SimpleEngine(default_model_path())
    with pytest.raises(EngineError, match=r"librarian@1.*model\.engine = batched"):
        await collect(engine, ask(GUIDE, "Hello?", lora))  # type: ignore[arg-type]
