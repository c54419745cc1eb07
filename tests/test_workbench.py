"""The workbench over HTTP (no browser): page, token, host check, events, chat stream, fragments.

The questions here never reach generation (a strict persona declines an off-topic question
before generating), so most tests run the app without the model; the browser tests generate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bots.adapters.http.api import create_http_app
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.projects import persona_md, write

Client = TestClient[web.Request, web.Application]
TOKEN = "workbench-test-token"
OFF_TOPIC = "Who won the 1998 football world cup?"
EVENT_WAIT_S = 30.0


async def client_for(app: Runtime) -> Client:
    client = TestClient(TestServer(create_http_app(app), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def idle_app(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    application = Runtime.create(settings_for(project))
    await application.start(watch=True, load_model=False)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
async def client(
    idle_app: Runtime,
) -> AsyncIterator[Client]:
    test_client = await client_for(idle_app)
    try:
        yield test_client
    finally:
        await test_client.close()


async def next_event(
    response: aiohttp.ClientResponse, name: str, until: Callable[[str], bool] = lambda _: True
) -> str:
    """The data of the next server-sent event called `name` (that satisfies `until`)."""

    async def read() -> str:
        event, data = "", []
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif not line and event:
                if event == name and until("\n".join(data)):
                    return "\n".join(data)
                event, data = "", []

    return await asyncio.wait_for(read(), EVENT_WAIT_S)


async def test_page_lists_personas_and_shows_the_chosen_one(client: Client, project: Path) -> None:
    response = await client.get("/")
    assert response.status == 200
    html = await response.text()
    assert (
        'data-persona="librarian"' in html
        and '<li class="persona selected" data-id="librarian">' in html
    )
    assert "Libby" in html and "Pete" in html and 'class="hash"' in html
    assert "/workbench/static/workbench.js" in html and "https://" not in html  # nothing fetched
    assert "bots_chat" in response.cookies
    html = await (await client.get("/?persona=pirate")).text()
    assert 'data-persona="pirate"' in html and "You are a pirate." in html
    static = await client.get("/workbench/static/workbench.js")
    assert static.status == 200 and "EventSource" in await static.text()


async def test_api_token_is_asked_for_and_gates_every_route(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    app = Runtime.create(settings_for(project, **{"server.api_token": TOKEN}))
    await app.start(watch=False, load_model=False)
    client = await client_for(app)
    try:
        page = await client.get("/")
        assert page.status == 401 and 'name="token"' in await page.text()
        assert (await client.get("/workbench/static/workbench.css")).status == 200
        assert (await client.get("/workbench/personas/librarian/about")).status == 401
        assert (await client.get("/workbench/events")).status == 401
        wrong = await client.post("/workbench/login", data={"token": "nope"})
        assert wrong.status == 401 and "not right" in await wrong.text()
        signed_in = await client.post(
            "/workbench/login", data={"token": TOKEN}, allow_redirects=False
        )
        assert signed_in.status == 303
        cookie = signed_in.cookies["bots_workbench"]
        assert (
            TOKEN not in cookie.value
            and "HttpOnly" in cookie.output()
            and "Strict" in cookie.output()
        )
        assert (await client.get("/")).status == 200  # the client keeps the cookie
        client.session.cookie_jar.clear()
        assert (await client.get("/workbench/personas/librarian/about")).status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (
            await client.get("/workbench/personas/librarian/about", headers=bearer)
        ).status == 200
    finally:
        await client.close()
        await app.close()


async def test_loopback_server_refuses_other_host_names(client: Client) -> None:
    assert (await client.get("/", headers={"Host": "rebound.example:80"})).status == 403
    assert (await client.get("/", headers={"Host": f"localhost:{client.port}"})).status == 200


async def test_state_changes_reach_the_page_as_events(client: Client, project: Path) -> None:
    async with client.session.get(client.make_url("/workbench/events")) as events:
        assert events.headers["Content-Type"] == "text/event-stream"
        first = await next_event(events, "personas")
        assert 'data-id="pirate"' in first
        source = project / "personas" / "pirate" / "persona.md"
        write(source, "---\nname: Pete\ngrounding: sometimes\n---\nArr.\n")
        broken = await next_event(events, "personas", lambda html: "persona.md:3" in html)
        assert "personas/pirate/persona.md:3" in broken and "must be one of strict, open" in broken
        changed = json.loads(await next_event(events, "persona"))
        assert changed == {"persona": "pirate"}
        write(source, persona_md("You are a calmer pirate.", name="Pete"))
        fixed = await next_event(events, "personas", lambda html: "persona.md:3" not in html)
        assert '<strong>Pete</strong> <code>pirate</code></a> <span class="badge ok">' in fixed


async def test_chat_streams_sources_text_and_stores_the_turn(app: Runtime) -> None:
    client = await client_for(app)
    try:
        await chat_and_reset(client, app)
    finally:
        await client.close()


async def chat_and_reset(client: Client, app: Runtime) -> None:
    await client.get("/")  # the page gives the browser its conversation cookie
    response = await client.post("/workbench/personas/librarian/chat", json={"text": OFF_TOPIC})
    assert response.status == 200 and response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines[0] == {"type": "sources", "sources": []}
    assert (
        "".join(x["text"] for x in lines if x["type"] == "text")
        == "I don't know: my documents don't cover that."
    )
    assert lines[-1]["type"] == "done" and lines[-1]["finish_reason"] == "declined"
    chat_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))["bots_chat"].value
    conversation = app.store.file.conversation_id("web", f"{chat_id}/librarian")
    assert [t.role for t in app.store.file.history(conversation)] == ["user", "assistant"]
    html = await (await client.get("/?persona=librarian")).text()
    assert OFF_TOPIC in html  # the conversation is shown again after a reload
    reset = await client.post("/workbench/personas/librarian/reset", json={})
    assert (await reset.json())["forgotten"] == 2
    form = await client.post("/workbench/personas/librarian/chat", data={"text": "hi"})
    assert form.status == 415  # a cross-site form cannot post here
    unknown = await client.post("/workbench/personas/nobody/chat", json={"text": "hi"})
    assert unknown.status == 404


async def test_retrieval_inspector_ranks_chunks_with_scores(client: Client) -> None:
    html = await (
        await client.get("/workbench/personas/librarian/retrieve", params={"q": "vacation days"})
    ).text()
    assert html.index("handbook/vacation.md") < html.index("</ol>")
    assert 'class="used"' in html and "declines below 0.3" in html
    none = await (
        await client.get("/workbench/personas/librarian/retrieve", params={"q": "zebra"})
    ).text()
    assert "Nothing in the documents matches" in none


@pytest.mark.parametrize("audience", ["everyone", "operator"])
async def test_retrieval_inspector_says_who_may_see_each_chunk_and_why_it_is_not_used(
    project: Path, settings_for: Callable[..., Settings], audience: str
) -> None:
    library = project / "knowledge" / "handbook"
    write(library / "hr" / "bands.md", "# Vacation bands\n\nSeniors get 5 more vacation days.\n")
    write(
        library / "knowledge.yaml", "audience:\n  - paths: ['hr/*']\n    slack_users: [U0HR0001]\n"
    )
    app = Runtime.create(settings_for(project, **{"server.audience": audience}))
    await app.start(watch=False, load_model=False)
    client = await client_for(app)
    try:
        html = await (
            await client.get(
                "/workbench/personas/librarian/retrieve", params={"q": "vacation days"}
            )
        ).text()
    finally:
        await client.close()
        await app.close()

    restricted = html[html.index("handbook/hr/bands.md") :].split("</li>")[0]
    assert "Who may see it: slack users U0HR0001" in restricted
    public = html[html.index("handbook/vacation.md") :].split("</li>")[0]
    assert "Who may see it: everyone" in public
    if audience == "everyone":
        assert "restricted: not used here" in restricted and "5 more" not in html
    else:
        assert "restricted" not in restricted and "5 more" in restricted


async def test_persona_tab_shows_instructions_and_documents(client: Client) -> None:
    html = await (await client.get("/workbench/personas/librarian/about")).text()
    assert "You are the librarian." in html and "handbook/vacation.md" in html
    assert "library handbook" in html and "grounding" in html


async def test_persona_tab_lists_what_was_left_out_as_not_content_and_why(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    library = project / "knowledge" / "handbook"
    write(library / "genindex.html", "<html><body><h1>Index</h1><p>vacation, 1</p></body></html>")
    write(library / "_static" / "searchindex.json", '{"vacation": [1]}')
    write(library / "vacation-copy.md", (library / "vacation.md").read_text())
    app = Runtime.create(settings_for(project))
    await app.start(watch=False, load_model=False)
    client = await client_for(app)
    try:
        html = await (await client.get("/workbench/personas/librarian/about")).text()
    finally:
        await client.close()
        await app.close()
    assert "Left out as not content: 3 path(s)" in html
    assert "<code>genindex.html</code>" in html and "<code>_static/</code>" in html
    assert "<code>vacation-copy.md</code>" in html and "<code>vacation.md</code>" in html


async def test_evals_run_when_first_shown_and_results_are_pushed(
    app: Runtime, project: Path
) -> None:
    evals = f"- ask: {OFF_TOPIC}\n  declines: true\n"
    write(project / "personas" / "librarian" / "evals.yaml", evals)
    client = await client_for(app)
    try:
        await evals_shown_and_pushed(client)
    finally:
        await client.close()


async def evals_shown_and_pushed(client: Client) -> None:
    async with client.session.get(client.make_url("/workbench/events")) as events:
        await next_event(events, "personas")
        first = await (await client.get("/workbench/personas/librarian/evals")).text()
        assert "running" in first
        pushed = json.loads(await next_event(events, "evals", lambda data: "status-pass" in data))
        assert pushed["persona"] == "librarian" and "1 passed, 0 failing of 1" in pushed["html"]
        shown = await (await client.get("/workbench/personas/librarian/evals")).text()
        assert "status-pass" in shown
        rerun = await client.post("/workbench/personas/librarian/evals/run", json={})
        assert rerun.status == 202
        feedback = await (await client.get("/workbench/personas/librarian/feedback")).text()
        assert "No reactions yet" in feedback
