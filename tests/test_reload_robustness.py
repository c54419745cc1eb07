"""Editors' save patterns, path escapes and a hot-reload torture run against the real watcher:
the loaded content is always a complete version of the file and nothing escapes the roots."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

import pytest

from bots.chat.model import Incoming
from bots.persona import watcher
from bots.persona.file_read import LEASES
from bots.persona.registry import ReloadEvent
from bots.runtime import Runtime
from tests.fakes.projects import persona_md, write
from tests.fakes.waiting import until

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"


def version(n: int) -> str:
    return persona_md(f"You are pirate version {n}. " + "Arr! " * (n % 7 * 30), name="Pete")


def body(text: str) -> str:
    return text.split("---\n", 2)[2].strip()


def record(app: Runtime) -> list[str]:
    seen: list[str] = []

    def listener(event: ReloadEvent) -> None:
        if event.outcome == "loaded" and event.state and event.state.persona:
            seen.append(event.state.persona.instructions)

    app.registry.add_listener(listener)
    return seen


async def settle(app: Runtime, expected: str) -> None:
    await until(
        lambda: (
            app.registry.get("pirate") is not None
            and app.registry.get("pirate").instructions == body(expected)
        )
    )  # type: ignore[union-attr]


async def test_vim_style_save_backup_rename_then_write(app: Runtime, project: Path) -> None:
    folder = project / "personas" / "pirate"
    seen = record(app)
    for n in range(1, 4):
        (folder / ".persona.md.swp").write_bytes(b"b0VIM swap")
        (folder / "4913").write_text("")
        (folder / "4913").unlink()
        os.rename(folder / "persona.md", folder / "persona.md~")
        (folder / "persona.md").write_text(version(n))
        (folder / "persona.md~").unlink()
        await settle(app, version(n))
    (folder / ".persona.md.swp").unlink()
    assert set(seen) <= {body(version(n)) for n in range(1, 4)}


async def test_gedit_style_save_temp_then_move(app: Runtime, project: Path) -> None:
    folder = project / "personas" / "pirate"
    seen = record(app)
    for n in range(1, 4):
        temp = folder / f".goutputstream-{n}ABCD"
        temp.write_text(version(n))
        os.replace(temp, folder / "persona.md")
        await settle(app, version(n))
    assert set(seen) <= {body(version(n)) for n in range(1, 4)}
    assert app.registry.errors() == []


async def test_kubernetes_configmap_symlink_swap(app: Runtime, project: Path) -> None:
    folder = project / "personas" / "k8s"
    folder.mkdir()

    def publish(n: int) -> None:
        data = folder / f"..2026_11_25_{n:02d}"
        data.mkdir()
        (data / "persona.md").write_text(version(n))
        tmp = folder / "..data_tmp"
        tmp.symlink_to(data.name, target_is_directory=True)
        os.replace(tmp, folder / "..data")
        if not (folder / "persona.md").is_symlink():
            (folder / "persona.md").symlink_to("..data/persona.md")

    publish(1)
    await until(
        lambda: (
            app.registry.get("k8s") is not None
            and app.registry.get("k8s").instructions == body(version(1))
        )
    )  # type: ignore[union-attr]
    publish(2)
    shutil.rmtree(folder / "..2026_11_25_01")
    await until(lambda: app.registry.get("k8s").instructions == body(version(2)))  # type: ignore[union-attr]
    assert app.registry.errors() == []


async def test_symlinks_out_of_the_roots_never_reach_a_prompt(app: Runtime, project: Path) -> None:
    outside = project / "outside"
    write(outside / "secret.md", f"# Vacation days secret\nvacation days {SECRET}\n")
    write(outside / "persona.md", persona_md(f"You are {SECRET}."))
    handbook = project / "knowledge" / "handbook"
    (handbook / "linked.md").symlink_to(outside / "secret.md")
    (handbook / "linked-dir").symlink_to(outside, target_is_directory=True)
    (project / "personas" / "stolen").symlink_to(outside, target_is_directory=True)
    (project / "personas" / "pirate" / "leak.md").symlink_to(outside / "secret.md")
    await asyncio.sleep(0.5)
    assert app.registry.get("stolen") is None
    for persona_id in ("librarian", "pirate"):
        reply = await app.service.start(
            Incoming(
                "test", "x", "u", "vacation days secret", persona_id, remember=False, max_tokens=2
            )
        )
        async for _ in reply:
            pass
        assert reply.prompt is not None
        assert all(SECRET not in m.content for m in reply.prompt.messages)

    def refused() -> bool:
        app.knowledge.index_for_library("handbook").refresh()
        skipped = [s for st in app.knowledge.stats().values() for s in st.skipped]
        return any("linked.md" in s for s in skipped)

    await until(refused)


@pytest.mark.skipif(not LEASES, reason="only Linux tells whether a file is open for writing")
async def test_writer_stalled_mid_save_is_never_loaded_half_written(
    app: Runtime, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher waits for the writer's close event only so long, and its view of open writers
    # lags the file system (the torture run below hit that): when it reloads the open file
    # anyway, the first 100 KB of an over-limit save must not become the pirate.
    monkeypatch.setattr(watcher, "WRITE_HOLD_S", 0.2)
    path = project / "personas" / "pirate" / "persona.md"
    good = app.registry.get("pirate")
    seen = record(app)
    huge = persona_md("x" * 300_000)
    with path.open("w") as out:
        out.write(huge[:100_000])
        out.flush()
        await asyncio.sleep(1.0)  # past the hold: the watcher reloads while the file is open
        out.write(huge[100_000:])
    await until(lambda: bool(app.registry.errors()))
    assert seen == []
    assert app.registry.get("pirate") is good
    assert "the limit is" in app.registry.errors()[0].message


async def test_torture_random_mutations_while_requests_run(app: Runtime, project: Path) -> None:
    rng = random.Random(7)
    folder = project / "personas" / "pirate"
    path = folder / "persona.md"
    outside = write(project / "outside" / "persona.md", persona_md(f"You are {SECRET}."))
    # Every instructions text a complete write could yield (a truncated write can still be a
    # valid, tiny persona: that is a complete version of what was written, not a partial one).
    valid = {body(persona_md("You are a pirate. Always answer like a pirate.", name="Pete"))}

    def wrote(text: str) -> None:
        path.write_text(text)
        if text.count("---\n") >= 2:
            valid.add(body(text))

    seen = record(app)
    answered: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def requests() -> None:
        while not stop.is_set():
            try:
                reply = await app.service.start(
                    Incoming("test", "t", "u", "hi", "pirate", remember=False, max_tokens=1),
                )
                async for _ in reply:
                    pass
                answered.append(reply.persona.instructions)
            except Exception as exc:  # any failure is a test failure, reported below
                if "doesn't exist" not in str(exc):
                    failures.append(exc)
            await asyncio.sleep(0)

    worker = asyncio.create_task(requests())
    last_valid = None
    for n in range(1000):
        kind = rng.choice(
            ["valid", "valid", "invalid", "truncated", "binary", "huge", "symlink", "delete"]
        )
        if path.is_symlink() or not folder.exists():
            folder.mkdir(exist_ok=True)
            path.unlink(missing_ok=True)
        if kind == "valid":
            wrote(version(n))
            last_valid = version(n)
        elif kind == "invalid":
            wrote(f"---\nname: [{n}\n---\nbroken {n}\n")
        elif kind == "truncated":
            wrote(version(n)[: rng.randint(0, 20)])
        elif kind == "binary":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        elif kind == "huge":
            path.write_text(persona_md("x" * 300_000))
        elif kind == "symlink":
            path.unlink(missing_ok=True)
            path.symlink_to(outside)
        else:
            shutil.rmtree(folder)
        if n % 50 == 0:
            await asyncio.sleep(0.05)
    folder.mkdir(exist_ok=True)
    if path.is_symlink():
        path.unlink()
    final = version(1000)
    wrote(final)
    await settle(app, final)
    stop.set()
    await worker
    assert not failures, failures[:3]
    assert answered, "requests must keep being answered during the mutations"
    unknown = [t[:80] for t in answered + seen if t not in valid]
    assert not unknown, unknown
    assert last_valid is None or body(last_valid) in valid
    assert app.registry.errors() == []
