"""The grounding gate of strict personas: claims, evidence, the streamed check, and its wiring
through the chat service (scripted engine outputs: an invented number, an invented URL, a
supported answer) and the HTTP API's stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bots.chat.claims as claims
import bots.chat.grounding as grounding
import bots.evals.report as report
from bots.chat import notices
from bots.chat.model import Incoming
from bots.chat.reply import Reply
from bots.evals.runner import run_persona
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import write, write_project

VACATION = (
    "acme/vacation.md",
    "Every full-time employee gets 25 vacation days per calendar year. Part-time employees get\n"
    "vacation days in proportion to their hours. Up to 5 unused days carry over and must be used\n"
    "by March 31.\n\nRequest vacation in the HR portal at least two weeks in advance.",
)
SECURITY = (
    "acme/security.html",
    "Passwords must be at least 14 characters long. Report a lost laptop to "
    "security@acme.example within one hour. Meals are refunded up to 45 euros a day.",
)
QUESTION = "How many vacation days do I get?"


def evidence(question: str = QUESTION) -> grounding.Evidence:
    return grounding.evidence([VACATION, SECURITY], question, context=["Vacation days"])


def missing(sentence: str, question: str = QUESTION) -> list[tuple[str, str]]:
    return [(c.kind, c.key) for c in grounding.unsupported(sentence, evidence(question))]


def gated(pieces: list[str], question: str = QUESTION) -> tuple[str, grounding.GateReport]:
    gate = grounding.Gate(evidence(question))
    shown = "".join(gate.feed(piece) for piece in pieces) + gate.finish()
    return shown, gate.report


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    ("sentence", "kinds"),
    [
        ("You get 25 days, or 1,000 hours.", [("number", "25"), ("number", "1000")]),
        ("It costs $45, €300 or 12%.", [("amount", "45 usd"), ("amount", "300 eur")]),
        ("By March 31st or 2024-04-01.", [("date", "march 31"), ("date", "april 1 2024")]),
        ("Write to hr@acme.example today.", [("email", "hr@acme.example")]),
        ("See https://www.acme.example/hr/ now.", [("url", "acme.example/hr")]),
        ('It says "at least two weeks".', [("quote", "at least two weeks"), ("number", "2")]),
        ("You get twenty-seven days.", [("number", "27")]),
        ("No one knows.", []),
        ("1. Open the portal", []),
    ],
)
def test_claims_are_found_and_normalised(sentence: str, kinds: list[tuple[str, str]]) -> None:
    found = [(c.kind, c.key) for c in claims.find(sentence)]
    assert all(kind in found for kind in kinds), found
    if not kinds:
        assert found == []


def test_a_claim_stands_in_any_form_the_documents_give_it() -> None:
    assert missing("You get 25 vacation days per year.") == []
    assert missing("Up to five days carry over until 31 March.") == []
    assert missing("Ask two weeks ahead: it takes 2 weeks.") == []
    assert missing("Meals: up to €45 a day.") == []
    assert missing("Mail security@acme.example or see acme.example.") == []
    assert missing('The handbook says "at least two weeks in advance".') == []
    assert missing("See acme/vacation.md and the Vacation days section.") == []


def test_invented_claims_are_caught() -> None:
    assert missing("27 * 4 = 95 So, you get 95 days.") == [
        ("number", "27"),
        ("number", "4"),
        ("number", "95"),
    ]
    assert missing("Meals: up to $45 a day.") == [("amount", "45 usd")]
    assert missing("Use them by April 30.") == [("date", "april 30")]
    assert missing("Mail vacation@acme.example.") == [("email", "vacation@acme.example")]
    assert missing("Book at https://hr.acme.example/leave") == [("url", "hr.acme.example/leave")]
    assert missing('It says "three weeks in advance".') == [
        ("quote", "three weeks in advance"),
        ("number", "3"),
    ]


def test_the_question_is_evidence_too() -> None:
    assert missing("No: you get 25, not 30.") == [("number", "30")]
    assert missing("No: you get 25, not 30.", "Do I get 30 vacation days?") == []


# --------------------------------------------------------------------------- sentences


def test_a_sentence_is_complete_only_once_whitespace_follows_its_end() -> None:
    assert grounding.take_sentences("You get 4.") == ([], "You get 4.")
    assert grounding.take_sentences("You get 4.5 days. Then") == (["You get 4.5 days. "], "Then")
    assert grounding.take_sentences("Steps:\n1. Open it.\n2. Go") == (
        ["Steps:\n", "1. Open it.\n"],
        "2. Go",
    )


@given(st.text(alphabet="ab 1.!?\n", max_size=60))
def test_sentences_put_back_together_are_the_text(text: str) -> None:
    sentences, rest = grounding.take_sentences(text)
    assert "".join(sentences) + rest == text


# --------------------------------------------------------------------------- the gate


def test_a_supported_answer_passes_whole_whatever_the_pieces() -> None:
    answer = "You get 25 vacation days a year. Up to 5 carry over to March 31. [acme/vacation.md]"
    for size in (1, 3, 7, len(answer)):
        shown, report = gated([answer[i : i + size] for i in range(0, len(answer), size)])
        assert shown == answer
        assert report.action == "passed" and report.dropped == 0 and report.sentences == 3


def test_an_unsupported_sentence_is_dropped_and_the_passage_quoted_after_the_rest() -> None:
    shown, report = gated(["Every employee gets vacation. 27 * 4 = 95 So", ", 95 days! Enjoy."])
    assert "95" not in shown and "27" not in shown
    assert shown == (
        "Every employee gets vacation. Enjoy.\n\n"
        + notices.documents_say(
            "acme/vacation.md", "Every full-time employee gets 25 vacation days per calendar year."
        )
    )
    assert report.action == "trimmed" and report.dropped == 1 and report.quoted == VACATION[0]
    assert report.counts() == {"number": 3}
    assert "number '95'" in report.reason()


def test_an_answer_with_nothing_supported_is_replaced_by_the_passage() -> None:
    shown, report = gated(["You get 95 days, see https://vacation.example/days"])
    assert shown == notices.documents_say(
        "acme/vacation.md", "Every full-time employee gets 25 vacation days per calendar year."
    )
    assert report.action == "quoted" and report.counts() == {"number": 1, "url": 1}


def test_an_answer_that_states_no_fact_gets_the_passage_that_does() -> None:
    shown, report = gated(["The handbook covers this topic."], "How long must my password be?")
    assert shown == "The handbook covers this topic.\n\n" + notices.documents_say(
        "acme/security.html", "Passwords must be at least 14 characters long."
    )
    assert report.action == "added" and report.unsupported == []
    shown, report = gated(["Meals are refunded up to 45 euros."], "How long must my password be?")
    assert report.action == "added", "a figure of the documents, but not the one asked for"
    assert shown.endswith('"Passwords must be at least 14 characters long."')


def test_the_decline_replaces_an_unsupported_answer_when_no_passage_matches() -> None:
    shown, report = gated(["It opened in 1887."], "When was the Eiffel tower built?")
    assert shown == notices.DECLINE
    assert report.action == "declined" and report.quoted == ""


def test_nothing_unchecked_is_released_before_the_end() -> None:
    gate = grounding.Gate(evidence())
    assert gate.feed("You get 95") == ""
    assert gate.feed(" days") == ""
    assert gate.feed(". You get 25 days. ") == "You get 25 days. "
    assert "95" not in gate.finish()


# --------------------------------------------------------------------------- the service

INVENTED_NUMBER = "27 * 4 = 95 So, you get 95 days for your vacation!"
INVENTED_URL = "Request time off at https://leave.example.com/request before you go."
SUPPORTED = "Every employee gets 25 vacation days per year. [handbook/vacation.md]"


@pytest.fixture
async def scripted(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> AsyncIterator[tuple[Runtime, ScriptedEngine]]:
    write_project(tmp_path)
    engine = ScriptedEngine(piece_chars=5)
    app = Runtime.create(settings_for(tmp_path), engine=engine)
    await app.start(watch=False)
    try:
        yield app, engine
    finally:
        await app.close()


async def ask(app: Runtime, persona_id: str, question: str) -> tuple[Reply, list[str]]:
    reply = await app.service.start(Incoming("test", "t", "tester", question, persona_id))
    return reply, [piece async for piece in reply]


@pytest.mark.parametrize(
    ("generated", "invented"), [(INVENTED_NUMBER, "95"), (INVENTED_URL, "leave.example.com")]
)
async def test_a_strict_persona_never_shows_an_invented_claim(
    scripted: tuple[Runtime, ScriptedEngine], generated: str, invented: str
) -> None:
    app, engine = scripted
    engine.text = generated
    reply, pieces = await ask(app, "librarian", QUESTION)
    assert invented not in "".join(pieces) and invented not in reply.text
    assert reply.generated == generated, "the model's text is kept apart from what was shown"
    assert reply.grounding is not None and reply.grounding.action == "quoted"
    assert reply.text == notices.documents_say(
        "handbook/vacation.md", "Every employee gets 25 vacation days per year."
    )
    stored = await app.service.history("test", "t")
    assert stored[-1].content == reply.text, "the store keeps what the user saw"
    quoted = [source["path"] for source in stored[-1].sources if source.get("quoted")]
    assert quoted == ["handbook/vacation.md"]


async def test_a_supported_answer_is_shown_whole(scripted: tuple[Runtime, ScriptedEngine]) -> None:
    app, engine = scripted
    engine.text = SUPPORTED
    reply, pieces = await ask(app, "librarian", QUESTION)
    assert "".join(pieces) == reply.text == SUPPORTED
    assert reply.grounding is not None and reply.grounding.action == "passed"


async def test_an_open_persona_is_not_gated(scripted: tuple[Runtime, ScriptedEngine]) -> None:
    app, engine = scripted
    engine.text = INVENTED_NUMBER
    reply, pieces = await ask(app, "pirate", QUESTION)
    assert "".join(pieces) == INVENTED_NUMBER and reply.grounding is None


async def test_the_http_stream_carries_only_checked_text(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from bots.adapters.http.api import create_http_app

    write_project(tmp_path)
    engine = ScriptedEngine(INVENTED_NUMBER + " " + SUPPORTED, piece_chars=4)
    app = Runtime.create(settings_for(tmp_path), engine=engine)
    await app.start(watch=False)
    client = TestClient(TestServer(create_http_app(app)))
    await client.start_server()
    try:
        body = {
            "model": "librarian",
            "stream": True,
            "messages": [{"role": "user", "content": QUESTION}],
        }
        response = await client.post("/v1/chat/completions", json=body)
        events = [
            json.loads(line[6:])
            for line in (await response.text()).splitlines()
            if line.startswith("data: {")
        ]
    finally:
        await client.close()
        await app.close()
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert "95" not in text and SUPPORTED in text
    assert events[-1]["grounding"]["action"] == "trimmed"
    assert events[-1]["grounding"]["unsupported"] == {"number": 3}


async def test_bots_eval_reports_gated_answers(
    scripted: tuple[Runtime, ScriptedEngine], tmp_path: Path
) -> None:
    app, engine = scripted
    engine.text = INVENTED_NUMBER
    write(
        tmp_path / "personas" / "librarian" / "evals.yaml",
        f"- name: vacation\n  ask: {QUESTION}\n  cites: vacation.md\n",
    )
    run = await run_persona(app, "librarian")
    (result,) = run.results
    assert result.status == "pass" and "95" not in result.answer
    assert result.gated == "quoted: not in the documents: number '27', number '4', number '95'"
    assert run.gated == 1 and run.as_dict()["gated"] == 1
    assert report.rows(run)[1] == report.REASON_INDENT + "gated " + result.gated
    assert ", 1 gated" in report.persona_summary(run)
