"""The quoting workload of `bots bench engine`: answers that copy their retrieved documents.

A grounded persona's prompt holds the documents retrieval found; asked to quote one, its answer
repeats the document's sentences, which is what prompt-lookup speculation drafts from. The same
personas are also asked for answers that do not quote (a poem, a story), where drafts are
rejected and must cost (almost) nothing. Each kind is timed on bots with speculation on (the
default) and off, and on llama-server without and with its own n-gram speculation
(`--spec-type ngram-simple`, its defaults), single stream, engines taking turns kind by kind
(one bots engine alive at a time).
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from bots.bench.contenders import ENGINE_N_CTX, Setup, llama_server, ours_engine, remote, started
from bots.bench.engine_report import OURS, OURS_NO_SPEC, SERVER, SERVER_NGRAM, Row, Target
from bots.bench.engine_workloads import Workload, timed
from bots.engine.base import ChatMessage, Engine, GenerationRequest
from bots.engine.batched import BatchedEngine, Speculation

SERVER_NGRAM_ARGS = ("--spec-type", "ngram-simple")

DOCUMENTS = {
    "returns": (
        "Returns policy. Customers may return any unopened item within thirty days of delivery "
        "for a full refund. Opened items can be returned within fourteen days if they are in "
        "their original packaging, and a restocking fee of ten percent applies. Refunds are "
        "issued to the original payment method within five business days after the warehouse "
        "receives the item. Gift cards and final-sale items cannot be returned."
    ),
    "security": (
        "Office security. Every employee receives a badge on the first day and must wear it "
        "visibly inside the building. Visitors sign in at the front desk, wear a red visitor "
        "badge and are accompanied by their host at all times. The last person to leave a floor "
        "after seven in the evening checks that the windows are closed and sets the alarm with "
        "the code posted in the security office."
    ),
    "expenses": (
        "Travel expenses. Book flights and hotels through the company travel portal at least "
        "two weeks before the trip. Economy class is the rule for flights under six hours. Keep "
        "every receipt and submit the expense report within ten days of returning; meals are "
        "reimbursed up to fifty euros a day, and taxis only when no public transport runs."
    ),
    "leave": (
        "Annual leave. Full-time employees have twenty-five days of paid leave a year, plus "
        "public holidays. Requests go to the line manager at least two weeks ahead for anything "
        "longer than three days. Up to five unused days may be carried over to the next year "
        "and must be taken before the end of March."
    ),
}
PERSONAS = (
    "You are the Acme handbook assistant. Answer only from the handbook extracts below, "
    "word for word where you can.",
    "You are Ada, the friendly office manager of Acme. You answer questions about the office "
    "using the handbook extracts below.",
)
QUOTING = tuple(f"Quote the handbook paragraph about {topic} verbatim." for topic in DOCUMENTS)
NOT_QUOTING = (
    "Write a short poem about the sea.",
    "Tell me a story about a dragon who learns to bake bread.",
    "Describe your perfect weekend in a few sentences.",
    "Explain why the sky is blue to a child.",
)


def _request(persona: int, question: str, w: Workload) -> GenerationRequest:
    extracts = "\n\n".join(DOCUMENTS.values())
    system = f"{PERSONAS[persona % len(PERSONAS)]}\n\nHandbook extracts:\n\n{extracts}"
    return GenerationRequest(
        messages=(ChatMessage("system", system), ChatMessage("user", question)),
        max_tokens=w.quoting_reply_tokens,
        temperature=0.0,
        repeat_penalty=1.0,
        timeout_s=600.0,
    )


async def _generation_rate(engine: Engine, request: GenerationRequest) -> tuple[float, str]:
    """Generation tok/s after the first token, and the reply."""
    text, sample = await timed(engine, request)
    gen_s = (sample.total_ms - sample.ttft_ms) / 1000
    return ((sample.completion_tokens - 1) / gen_s if gen_s > 0 else 0.0), text


def _drafts(engine: BatchedEngine) -> str:
    parts = engine.status().detail.split("; ")
    return next((p for p in parts if p.startswith("n-gram drafts")), "speculation off")


async def quoting_rows(
    setup: Setup, server: Path | None, w: Workload
) -> tuple[list[Row], list[str]]:
    """Rows for quoting and non-quoting answers, and notes (drafts accepted, same replies)."""
    kinds = {
        "quoting": QUOTING[: w.quoting_questions],
        "not quoting": NOT_QUOTING[: w.quoting_questions],
    }
    rates: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
    replies: dict[str, list[str]] = {}
    notes: list[str] = []

    async def measure(name: str, engine: Engine, kind: str) -> None:
        for i, question in enumerate(kinds[kind]):
            rate, text = await _generation_rate(engine, _request(i, question, w))
            rates[kind].setdefault(name, []).append(rate)
            replies.setdefault(name, []).append(text)

    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, Engine] = {}
        if server is not None:
            for name, extra in ((SERVER, ()), (SERVER_NGRAM, SERVER_NGRAM_ARGS)):
                args = ["-c", str(ENGINE_N_CTX), "-np", "1", *extra]
                url = stack.enter_context(llama_server(server, setup, args))
                servers[name] = await remote(url, 1)
                stack.push_async_callback(servers[name].close)
        for kind in kinds:
            # One bots engine alive at a time: two llama.cpp contexts in one process share its
            # OpenMP threads and halve each other's speed.
            for name, spec in ((OURS, Speculation()), (OURS_NO_SPEC, Speculation("off"))):
                engine = ours_engine(setup, parallel=1, speculation=spec)
                async with started(engine):
                    await measure(name, engine, kind)
                    if name == OURS:
                        notes.append(f"{kind} workload, bots: {_drafts(engine)}")
            for name, remote_engine in servers.items():
                await measure(name, remote_engine, kind)
    same = sum(a == b for a, b in zip(replies[OURS], replies[OURS_NO_SPEC], strict=True))
    notes.append(
        f"quoting workload: {same} of {len(replies[OURS])} bots replies identical with "
        "speculation on and off (greedy)"
    )
    rows = []
    for kind, by_engine in rates.items():
        medians = {name: statistics.median(v) for name, v in by_engine.items()}
        target = Target(1.0, SERVER_NGRAM) if kind == "quoting" else Target(0.95, OURS_NO_SPEC)
        label = f"answers {kind} their documents ({len(kinds[kind])} questions)"
        rows.append(Row(label, "generation tok/s", "higher", medians.pop(OURS), medians, target))
    return rows, notes
