"""The shared renderer: splitting at limits without breaking code or words; paced edits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bots.adapters.render import StreamRenderer, split_message


def test_short_text_is_one_part() -> None:
    assert split_message("hello world", 2000) == ["hello world"]


def test_split_respects_limit_and_words() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    parts = split_message(words, 2000)
    assert len(parts) > 1 and all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == words.split()


def test_code_block_is_closed_and_reopened() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```"
    parts = split_message("Here:\n" + code, 2000)
    assert len(parts) > 1
    for part in parts:
        assert part.count("```") % 2 == 0, part[-50:]
        assert len(part) <= 2000
    assert parts[1].startswith("```python\n")


@given(st.text(alphabet=st.sampled_from(list("ab `\n")), max_size=3000), st.integers(20, 500))
def test_split_never_exceeds_limit_or_loses_text(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert all(len(p) <= limit for p in parts)

    def letters(t: str) -> str:  # fences may be added and whitespace moved at the cuts
        return "".join(t.replace("`", "").split())

    assert letters("".join(parts)) == letters(text)


class RecordingSink:
    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    async def send(self, text: str) -> str:
        message_id = str(len(self.messages) + 1)
        self.messages[message_id] = text
        self.calls.append(("send", text))
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        self.messages[message_id] = text
        self.calls.append(("edit", text))


async def test_renderer_paces_edits_and_ends_with_the_full_text() -> None:
    now = [0.0]
    sink = RecordingSink()
    renderer = StreamRenderer(sink, limit=2000, interval_s=1.0, clock=lambda: now[0])
    for i in range(50):
        now[0] += 0.1  # ten pieces a second: about one edit a second
        await renderer.feed(f"w{i} ")
    await renderer.finish(footer="Sources: a.md")
    assert 4 <= len(sink.calls) <= 7
    assert sink.messages["1"].startswith("w0 w1") and sink.messages["1"].endswith("Sources: a.md")


async def test_renderer_moves_to_new_messages_past_the_limit() -> None:
    sink = RecordingSink()
    renderer = StreamRenderer(sink, limit=100, interval_s=0.0)
    for i in range(60):
        await renderer.feed(f"token{i} ")
    ids = await renderer.finish()
    assert len(ids) >= 5 and all(len(t) <= 100 for t in sink.messages.values())
    assert " ".join(sink.messages[i] for i in ids).split() == [f"token{i}" for i in range(60)]
