"""The grounding gate of `grounding: strict` personas: what an answer asserts must stand in the
documents it was given (or in the question).

A claim is a number, an amount (a number with a currency or a percent sign), a date, an e-mail
address, a URL or a quoted phrase (`bots.chat.claims` finds and normalises them). `Evidence`
holds those of the prompt's documents and of the question; a claim stands when its normalised
form is there. Wording is not checked: a sentence
with no claim passes (a small model's paraphrase is fine; its invented figures are not).

`Gate` checks a streamed answer sentence by sentence: it holds text until a sentence is complete,
releases the sentences that stand, and drops the others. If it dropped any, the answer ends with
the passage of the documents that best matches the question, quoted with its source; if none
matches and nothing stood, the answer is the decline. An answer that stood but states none of
the facts of that passage gets the passage too (a small model often talks around the figure asked
for, or gives another figure of the documents). `GateReport` says which and why, in figures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import bots.chat.claims as claims
import bots.chat.notices as notices
from bots.knowledge.lexical import tokenize

Action = Literal["passed", "trimmed", "quoted", "added", "declined"]

# Passages shorter than this many words (headings, table cells) are not quoted as an answer.
PASSAGE_MIN_WORDS = 4

_SENTENCE_END = re.compile(r"(?:[.!?]+[\"'”’)\]]*[ \t]+|\s*\n\s*)")
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•]|#+)\s*$")


@dataclass(frozen=True)
class Passage:
    """A sentence of a document that the gate may quote, with the document's path."""

    source: str
    text: str
    terms: frozenset[str]
    facts: bool  # holds a number, date, address or link


@dataclass(frozen=True)
class Evidence:
    """The normalised claims the documents and the question hold, and the documents' sentences."""

    keys: frozenset[tuple[claims.ClaimKind, str]]
    words: str  # every word, lower case, space separated and padded: for quoted phrases
    passages: tuple[Passage, ...]
    question_terms: frozenset[str]


def evidence(
    documents: Sequence[tuple[str, str]], question: str, *, context: Sequence[str] = ()
) -> Evidence:
    """The evidence of `documents` ((source path, text) pairs), the question and `context`
    (titles and headings: evidence, but never quoted as an answer).

    Source paths count as evidence too: an answer may name the document it cites.
    """
    keys: set[tuple[claims.ClaimKind, str]] = set()
    words: list[str] = []
    passages: list[Passage] = []
    for part in context:
        keys |= claims.evidence_keys(part)
        words.extend(claims.words(part))
    for source, text in documents:
        for part in (source, text):
            keys |= claims.evidence_keys(part)
            words.extend(claims.words(part))
        for sentence in split_sentences(_unwrap(text)):
            terms = frozenset(tokenize(sentence))
            if len(claims.words(sentence)) >= PASSAGE_MIN_WORDS and terms:
                facts = any(c.kind != "quote" for c in claims.find(sentence))
                passages.append(Passage(source, sentence.strip(), terms, facts))
    keys |= claims.evidence_keys(question)
    words.extend(claims.words(question))
    return Evidence(
        frozenset(keys), " " + " ".join(words) + " ", tuple(passages), frozenset(tokenize(question))
    )


def unsupported(sentence: str, evidence: Evidence) -> list[claims.Claim]:
    """The claims of `sentence` that the evidence does not hold."""
    missing: list[claims.Claim] = []
    for claim in claims.find(sentence):
        if any((m.kind, m.key) == (claim.kind, claim.key) for m in missing):
            continue
        if claim.kind == "quote":
            held = f" {claim.key} " in evidence.words
        elif claim.kind == "date" and " " not in claim.key:
            held = any(k == "date" and v.split(" ")[0] == claim.key for k, v in evidence.keys)
        else:
            held = (claim.kind, claim.key) in evidence.keys
        if not held:
            missing.append(claim)
    return missing


def best_passage(evidence: Evidence) -> Passage | None:
    """The documents' sentence that shares most terms with the question (facts break ties,
    then document order); None when no sentence shares any."""
    best: Passage | None = None
    best_rank = (0, False)
    for passage in evidence.passages:
        rank = (len(passage.terms & evidence.question_terms), passage.facts)
        if rank[0] and rank > best_rank:
            best, best_rank = passage, rank
    return best


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end or line break; the pieces keep their separators."""
    sentences, rest = take_sentences(text)
    return [*sentences, rest] if rest.strip() else sentences


def take_sentences(buffer: str) -> tuple[list[str], str]:
    """The complete sentences at the start of `buffer`, and the unfinished rest.

    A sentence is complete once whitespace follows its end, so "4." of "4.5" is not one; a list
    marker ("1.", "-") stays with the sentence after it.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(buffer):
        piece = buffer[start : match.end()]
        if _LIST_MARKER.match(piece) or not piece.strip():
            continue
        sentences.append(piece)
        start = match.end()
    return sentences, buffer[start:]


@dataclass
class GateReport:
    """What the gate did to one answer, for the reply's record, the logs and evals."""

    action: Action = "passed"
    sentences: int = 0
    dropped: int = 0
    unsupported: list[claims.Claim] = field(default_factory=list)
    quoted: str = ""  # the source of the passage quoted, if one was

    @property
    def changed(self) -> bool:
        return self.action != "passed"

    def counts(self) -> dict[str, int]:
        """Unsupported claims per kind (only the kinds that occurred)."""
        out: dict[str, int] = {}
        for claim in self.unsupported:
            out[claim.kind] = out.get(claim.kind, 0) + 1
        return out

    def reason(self) -> str:
        """Why, in words: the unsupported claims (for the operator: evals, the workbench)."""
        if self.action == "added":
            return "the answer stated none of the facts of the passage that best matches"
        if not self.unsupported:
            return ""
        listed = ", ".join(f"{c.kind} {c.text!r}" for c in self.unsupported)
        return f"not in the documents: {listed}"

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "sentences": self.sentences,
            "dropped": self.dropped,
            "unsupported": self.counts(),
            "quoted": self.quoted,
        }


class Gate:
    """Checks a streamed answer a sentence at a time; see the module docstring."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.report = GateReport()
        self._buffer = ""
        self._kept = False  # some sentence with words stood
        self._stated: set[tuple[claims.ClaimKind, str]] = set()  # the facts of what stood

    def feed(self, piece: str) -> str:
        """Add generated text; return the text that may be shown now."""
        self._buffer += piece
        sentences, self._buffer = take_sentences(self._buffer)
        return "".join(self._check(s) for s in sentences)

    def finish(self) -> str:
        """The answer has ended: check what is held and return the rest to show.

        Something dropped: the best passage follows what stood (`trimmed`) or replaces it all
        (`quoted`), or the decline replaces it when no passage matches (`declined`). Nothing
        dropped, but none of the facts the best passage states is in the answer: the passage
        follows (`added`), so a user asking for a figure sees the documents' figure even when
        the model gave another figure of the documents or none.
        """
        shown = self._check(self._buffer) if self._buffer.strip() else ""
        self._buffer = ""
        dropped = bool(self.report.dropped)
        passage = best_passage(self.evidence)
        if not dropped and (passage is None or self._states_fact_of(passage)):
            return shown
        if passage is None or (not dropped and self._kept and not passage.facts):
            if dropped:
                self.report.action = "trimmed" if self._kept else "declined"
                return shown if self._kept else notices.DECLINE
            return shown
        self.report.quoted = passage.source
        quote = notices.documents_say(passage.source, passage.text)
        if not self._kept:
            self.report.action = "quoted"
            return quote
        self.report.action = "trimmed" if dropped else "added"
        return shown.rstrip() + "\n\n" + quote

    def _states_fact_of(self, passage: Passage) -> bool:
        """Whether the answer so far states a fact of `passage` (or the passage states none)."""
        if not passage.facts:
            return True
        return bool(self._stated & claims.evidence_keys(passage.text))

    def _check(self, sentence: str) -> str:
        self.report.sentences += 1
        missing = unsupported(sentence, self.evidence)
        if missing:
            self.report.dropped += 1
            self.report.unsupported.extend(missing)
            return ""
        self._kept = self._kept or bool(claims.words(sentence))
        self._stated |= {(c.kind, c.key) for c in claims.find(sentence) if c.kind != "quote"}
        return sentence


def _unwrap(text: str) -> str:
    """Join the lines of each paragraph (documents wrap sentences); list items and table rows
    keep their own lines."""
    return re.sub(r"(?<=\S)\n(?![\n\s]*(?:[-*•|#]|\d{1,2}[.)])\s)(?=\S)", " ", text)
