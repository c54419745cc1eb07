"""The workbench's HTML: the page and the fragments the page swaps in when something changes.

Everything is rendered here, on the server, with every value escaped; the browser script only
inserts these fragments and streams chat text. Fragments are plain functions of immutable data,
so they are cheap to test and to render on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from bots.chat.model import Feedback, Turn
from bots.engine.switch import ModelState
from bots.evals.model import EvalError, Flip, PersonaRun
from bots.knowledge.audience import Reader, describe, visible
from bots.knowledge.model import Exclusion, Hit
from bots.persona.model import Persona, PersonaError
from bots.persona.registry import PersonaState

SNIPPET_CHARS = 280
TABS = (
    ("chat", "Chat"),
    ("retrieval", "Retrieval"),
    ("about", "Persona"),
    ("evals", "Evals"),
    ("feedback", "Feedback"),
)


@dataclass(frozen=True)
class Document:
    """A knowledge document as the persona page lists it."""

    path: str
    title: str
    chunks: int


@dataclass(frozen=True)
class Shelf:
    """The documents of one index a persona retrieves from (its folder, or one library)."""

    label: str
    documents: tuple[Document, ...]
    skipped: tuple[str, ...]
    excluded: tuple[Exclusion, ...] = ()


@dataclass(frozen=True)
class EvalView:
    """What the evals tab shows: the last run, whether one is going on, and what flipped."""

    run: PersonaRun | None
    running: bool
    flips: tuple[Flip, ...] = ()


@cache
def template(name: str) -> Template:
    """A template shipped in the package (`adapters/web/templates`)."""
    text = resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")
    return Template(text)


def h(value: object) -> str:
    return escape(str(value), quote=True)


def clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp)) if timestamp else "never"


def shown_path(path: Path, root: Path) -> str:
    """A file path relative to the project root when it is inside it (shorter, and what the
    author sees in their editor)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def page(*, personas_html: str, persona_id: str, panel_html: str) -> str:
    return template("page.html").substitute(
        personas=personas_html, persona_id=h(persona_id), panel=panel_html
    )


def login_page(*, failed: bool) -> str:
    message = '<p class="error" role="alert">That token is not right.</p>' if failed else ""
    return template("login.html").substitute(message=message)


def model_block(state: ModelState, engine_model: str) -> str:
    """Which model serves (and since when); a failed switch shown as a persona's error is."""
    error = ""
    if state.error:
        error = (
            '<ul class="problems" role="alert"><li>switch to '
            f'<code class="where">{h(state.error_source)}</code> failed at '
            f"{clock(state.error_at)}, still serving the model above: {h(state.error)}</li></ul>"
        )
    return (
        f'<div class="model" id="model">model <strong class="model-name">{h(engine_model)}'
        f'</strong> <span class="meta">since <time>{clock(state.since)}</time> · '
        f"{h(state.source)}</span>{error}</div>"
    )


def personas_list(
    states: Sequence[PersonaState], selected: str, runs: dict[str, EvalView], root: Path
) -> str:
    """The list of personas with their live state: loaded, last reload, hash, current errors."""
    if not states:
        return '<p class="empty">No personas yet: create one with <code>bots new NAME</code>.</p>'
    items = [_persona_item(s, s.id == selected, runs.get(s.id), root) for s in states]
    return '<ul class="personas">' + "".join(items) + "</ul>"


def _persona_item(state: PersonaState, selected: bool, evals: EvalView | None, root: Path) -> str:
    persona = state.persona
    if state.errors:
        badge = '<span class="badge error">error</span>'
    elif persona is not None:
        badge = '<span class="badge ok">loaded</span>'
    else:
        badge = '<span class="badge">not loaded</span>'
    name = persona.display_name if persona else state.id
    classes = "persona" + (" selected" if selected else "") + (" has-error" if state.errors else "")
    digest = persona.content_hash if persona else "-"
    return (
        f'<li class="{classes}" data-id="{h(state.id)}">'
        f'<a href="/?persona={h(state.id)}"><strong>{h(name)}</strong> '
        f"<code>{h(state.id)}</code></a> {badge}{_eval_badge(evals)}"
        f'<div class="meta">hash <code class="hash">{h(digest)}</code> · reloaded '
        f'<time class="reloaded">{clock(state.last_reload)}</time> · '
        f"{state.reloads} reload(s)</div>{problems(state.errors, root)}</li>"
    )


def _eval_badge(view: EvalView | None) -> str:
    if view is None:
        return ""
    if view.running:
        return ' <span class="badge running">evals running</span>'
    run = view.run
    if run is None or not run.results:
        return ""
    passed = run.count("pass")
    kind = "error" if run.failed else "ok"
    return f' <span class="badge {kind}">evals {passed}/{len(run.results)}</span>'


def problems(errors: Iterable[PersonaError | EvalError], root: Path) -> str:
    """Errors as `file:line key: message`, the way an editor's jump-to-line wants them."""
    items = []
    for error in errors:
        where = shown_path(error.path, root) + (f":{error.line}" if error.line else "")
        key = f" <code>{h(error.key)}</code>" if error.key else ""
        items.append(f'<li><code class="where">{h(where)}</code>{key}: {h(error.message)}</li>')
    return f'<ul class="problems" role="alert">{"".join(items)}</ul>' if items else ""


def persona_panel(
    persona: Persona | None,
    state: PersonaState | None,
    *,
    history_html: str,
    about_html: str,
    evals_html: str,
    root: Path,
) -> str:
    """The selected persona: a heading, then its tabs (chat, retrieval, files, evals, feedback)."""
    if state is None:
        return '<p class="empty">Choose a persona.</p>'
    if persona is None:
        return (
            f"<h2>{h(state.id)}</h2><p>This persona has not loaded yet; fix its file:</p>"
            + problems(state.errors, root)
        )
    tabs = "".join(
        f'<button type="button" role="tab" data-tab="{key}" id="tab-{key}">{label}</button>'
        for key, label in TABS
    )
    greeting = f'<p class="greeting">{h(persona.greeting)}</p>' if persona.greeting else ""
    starters = "".join(
        f'<button type="button" class="starter">{h(s)}</button>' for s in persona.starters
    )
    return template("panel.html").substitute(
        id=h(persona.id),
        name=h(persona.display_name),
        description=h(persona.description),
        tabs=tabs,
        greeting=greeting,
        starters=starters,
        history=history_html,
        about=about_html,
        evals=evals_html,
    )


def history(turns: Sequence[Turn]) -> str:
    """The remembered turns of the browser's conversation with the persona."""
    out = []
    for turn in turns:
        if turn.role == "user":
            out.append(f'<div class="msg user">{h(turn.content)}</div>')
        else:
            out.append(
                f'<div class="msg bot"><div class="text">{h(turn.content)}</div>'
                f"{sources(turn.sources)}</div>"
            )
    return "".join(out)


def sources(items: Iterable[dict[str, Any]]) -> str:
    rows = []
    for source in items:
        snippet = source.get("snippet")
        rows.append(
            f"<li><code>{h(source.get('path', ''))}</code> "
            f'<span class="score">{float(source.get("score", 0)):.2f}</span>'
            + (f' <span class="snippet">{h(snippet)}</span>' if snippet else "")
            + "</li>"
        )
    return f'<ul class="sources">{"".join(rows)}</ul>' if rows else ""


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A source as the chat stream sends it: path, heading, score and a snippet of the chunk."""
    return {
        "path": hit.path,
        "heading": hit.heading,
        "score": round(hit.score, 3),
        "snippet": snippet(hit.text),
    }


def snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def retrieval(query: str, hits: Sequence[Hit], floor: float, strict: bool, reader: Reader) -> str:
    """The ranked chunks for a query: for each, who may see its document and whether a reply
    here would use it (not below the score the service uses, and visible to `reader`, who the
    workbench answers as). A chunk `reader` may not see is named, its text not shown."""
    if not query.strip():
        return '<p class="empty">Type a question to see what the persona would read.</p>'
    if not hits:
        return f'<p class="empty">Nothing in the documents matches “{h(query)}”.</p>'
    use = "declines below" if strict else "ignores chunks below"
    rows = []
    for rank, hit in enumerate(hits, start=1):
        seen = visible(hit.access, reader)
        used = seen and hit.score >= floor
        heading = f" › {h(hit.heading)}" if hit.heading else ""
        why = (
            ""
            if used
            else " <em>restricted: not used here (server.audience)</em>"
            if not seen
            else " <em>below the floor</em>"
        )
        text = snippet(hit.text) if seen else "(text not shown: restricted)"
        rows.append(
            f'<li class="{"used" if used else "unused"}"><div class="hit-head">'
            f'<span class="rank">{rank}</span> <span class="score">{hit.score:.3f}</span> '
            f"<code>{h(hit.path)}</code>{heading}{why}</div>"
            f'<p class="audience">Who may see it: {h(describe(hit.access))}</p>'
            f'<p class="snippet">{h(text)}</p></li>'
        )
    return (
        f'<p class="note">Score 1.0 ≈ every query term present once; the persona {use} '
        f"{floor:g}. Replies here answer as {h(reader.describe())}.</p>"
        f'<ol class="hits">{"".join(rows)}</ol>'
    )


def about(persona: Persona, shelves: Sequence[Shelf], root: Path) -> str:
    """The persona's settings, instructions and documents, read-only."""
    settings = [
        ("file", shown_path(persona.source, root)),
        ("hash", persona.content_hash),
        ("grounding", persona.grounding),
        ("citations", "yes" if persona.citations else "no"),
        ("libraries", ", ".join(persona.knowledge) or "none"),
        ("loaded", clock(persona.loaded_at)),
    ]
    rows = "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in settings)
    parts = [
        f'<dl class="settings">{rows}</dl>',
        f'<h3>Instructions</h3><pre class="instructions">{h(persona.instructions)}</pre>',
        "<h3>Documents</h3>",
    ]
    for shelf in shelves:
        docs = (
            "".join(
                f"<li><code>{h(d.path)}</code> {h(d.title)} "
                f'<span class="count">{d.chunks} chunk(s)</span></li>'
                for d in shelf.documents
            )
            or '<li class="empty">no documents</li>'
        )
        skipped = "".join(f'<li class="skipped">{h(s)}</li>' for s in shelf.skipped)
        parts.append(f'<h4>{h(shelf.label)}</h4><ul class="documents">{docs}{skipped}</ul>')
        if shelf.excluded:
            parts.append(excluded_list(shelf.excluded))
    parts.append('<p class="note">Read-only: edit the files in your editor; this page follows.</p>')
    return "".join(parts)


def excluded_list(excluded: tuple[Exclusion, ...]) -> str:
    """What an index left out as not content, each path with its reason (folded away)."""
    items = "".join(
        f"<li><code>{h(e.rel)}</code> {h(e.reason)}"
        + (f" (the same text as <code>{h(e.detail)}</code>)" if e.detail else "")
        + "</li>"
        for e in excluded
    )
    return (
        f'<details class="excluded"><summary>Left out as not content: {len(excluded)} '
        f"path(s)</summary><ul>{items}</ul></details>"
    )


def feedback(items: Sequence[Feedback]) -> str:
    """Thumbs up and down from chat, newest first, with the exchange they judged."""
    if not items:
        return (
            '<p class="empty">No reactions yet. 👍 or 👎 on a bot reply in Discord or Slack lands '
            "here; <code>bots feedback --to-evals PERSONA</code> turns the 👎 into eval cases.</p>"
        )
    rows = []
    for item in items:
        thumb = "👍" if item.value > 0 else "👎"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created_at))
        rows.append(
            f'<li class="{"up" if item.value > 0 else "down"}"><div class="fb-head">'
            f'<span class="thumb">{thumb}</span> {h(item.platform)} · {h(when)}</div>'
            f'<div class="q">{h(item.question)}</div><div class="a">{h(item.answer)}</div></li>'
        )
    return f'<ul class="feedback">{"".join(rows)}</ul>'
