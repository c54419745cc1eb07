"""The grounding gate of `grounding: strict` personas: what an answer asserts must stand in the
documents it was given (or in the question).

A claim is a number, an amount (a number with a currency or a percent sign), a date, an e-mail
address, a URL or a quoted phrase. `Evidence` holds those of the prompt's documents and of the
question, normalised ("1,000" = "1000", "ten" = "10", "45 euros" = "€45", "https://www.x.org/" =
"x.org"); a claim stands when its normalised form is there. Wording is not checked: a sentence
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

import bots.chat.notices as notices
from bots.knowledge.lexical import tokenize

ClaimKind = Literal["number", "amount", "date", "email", "url", "quote"]
Action = Literal["passed", "trimmed", "quoted", "added", "declined"]
CLAIM_KINDS: tuple[ClaimKind, ...] = ("number", "amount", "date", "email", "url", "quote")

# Passages shorter than this many words (headings, table cells) are not quoted as an answer.
PASSAGE_MIN_WORDS = 4

_MONTHS = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
_MONTH_OF = {m: m for m in _MONTHS} | {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_DATE_PATTERNS = (
    re.compile(rf"\b({_MONTH})\.?\s+{_DAY}\b(?:,?\s+(\d{{4}}))?", re.IGNORECASE),
    re.compile(rf"\b{_DAY}(?:\s+of)?\s+({_MONTH})\b\.?(?:,?\s+(\d{{4}}))?", re.IGNORECASE),
)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_SLASH_DATE = re.compile(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b")
# A month name alone is a date claim too, except "may" (a verb far more often than a month).
_MONTH_ALONE = re.compile(
    r"\b(january|february|march|april|june|july|august|september|october|november|december)\b",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]]+", re.IGNORECASE)
_TLDS = "com|org|net|io|dev|co|edu|gov|info|biz|app|ai|example|uk|de|fr|eu|us|ca"
_DOMAIN = re.compile(
    rf"(?<![\w@.-])(?:[a-z0-9-]+\.)+(?:{_TLDS})\b(?:/[^\s<>\"'()\[\]]*)?", re.IGNORECASE
)
_QUOTE = re.compile(r"\"([^\"\n]{2,200})\"|“([^”\n]{2,200})”")
_CURRENCY_BEFORE = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy"}
_CURRENCY_AFTER = {
    "usd": "usd", "dollar": "usd", "dollars": "usd", "eur": "eur", "euro": "eur",
    "euros": "eur", "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "%": "%", "percent": "%",
    "per cent": "%", "chf": "chf", "francs": "chf", "yen": "jpy",
}  # fmt: skip
_NUMBER = re.compile(
    r"(?P<before>[$€£¥]\s?)?(?<![\w.])(?P<value>\d+(?:[.,:]\d+)*)(?:st|nd|rd|th)?"
    r"(?P<after>\s?(?:%|percent|per cent)|\s(?:usd|dollars?|eur|euros?|gbp|pounds?|chf|francs|yen)"
    r"\b)?",
    re.IGNORECASE,
)
_UNITS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_SMALL = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9}  # fmt: skip
# "one" is a claim nowhere ("no one", "the one that"), but it is evidence for "1".
_NUMBER_WORD = re.compile(
    rf"\b(?:({'|'.join(_TENS)})(?:[- ]({'|'.join(_SMALL)}))?|({'|'.join(_UNITS)}|one))\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?:[.!?]+[\"'”’)\]]*[ \t]+|\s*\n\s*)")
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•]|#+)\s*$")
_LEADING_MARKER = re.compile(r"^\s*\d{1,2}[.)](?=\s)")
_WORDS = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Claim:
    """Something an answer asserts that the evidence must hold: its kind and its text."""

    kind: ClaimKind
    text: str  # as the answer wrote it
    key: str  # the normalised form that is looked up


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

    keys: frozenset[tuple[ClaimKind, str]]
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
    keys: set[tuple[ClaimKind, str]] = set()
    words: list[str] = []
    passages: list[Passage] = []
    for part in context:
        keys |= _evidence_keys(part)
        words.extend(_words(part))
    for source, text in documents:
        for part in (source, text):
            keys |= _evidence_keys(part)
            words.extend(_words(part))
        for sentence in split_sentences(_unwrap(text)):
            terms = frozenset(tokenize(sentence))
            if len(_words(sentence)) >= PASSAGE_MIN_WORDS and terms:
                facts = any(c.kind != "quote" for c in claims(sentence))
                passages.append(Passage(source, sentence.strip(), terms, facts))
    keys |= _evidence_keys(question)
    words.extend(_words(question))
    return Evidence(
        frozenset(keys), " " + " ".join(words) + " ", tuple(passages), frozenset(tokenize(question))
    )


def claims(sentence: str) -> list[Claim]:
    """Every claim of one sentence, in order of kind (see the module docstring)."""
    found: list[Claim] = []
    marker = _LEADING_MARKER.match(sentence)
    # A list's numbering is no claim: its span counts as taken.
    taken: list[tuple[int, int]] = [marker.span()] if marker else []

    def add(kind: ClaimKind, match: re.Match[str], key: str) -> None:
        found.append(Claim(kind, match.group(0).strip(), key))
        taken.append(match.span())

    for match in _EMAIL.finditer(sentence):
        add("email", match, match.group(0).lower().rstrip("."))
    for match in _URL.finditer(sentence):
        if not _inside(match.span(), taken):
            add("url", match, _url_key(match.group(0)))
    for match in _DOMAIN.finditer(sentence):
        if not _inside(match.span(), taken):
            add("url", match, _url_key(match.group(0)))
    for match in _QUOTE.finditer(sentence):
        phrase = match.group(1) or match.group(2)
        if _words(phrase):
            found.append(Claim("quote", phrase, " ".join(_words(phrase))))
    for kind, key, span, text in _dates(sentence):
        if not _inside(span, taken):
            found.append(Claim(kind, text, key))
            taken.append(span)
    for match in _NUMBER.finditer(sentence):
        if _inside(match.span("value"), taken):
            continue
        value = _number_key(match.group("value"))
        unit = _unit(match)
        if unit:
            add("amount", match, f"{value} {unit}")
        else:
            found.append(Claim("number", match.group("value"), value))
    for match in _NUMBER_WORD.finditer(sentence):
        if match.group(0).lower() != "one" and not _inside(match.span(), taken):
            found.append(Claim("number", match.group(0), str(_word_value(match))))
    return found


def unsupported(sentence: str, evidence: Evidence) -> list[Claim]:
    """The claims of `sentence` that the evidence does not hold."""
    missing: list[Claim] = []
    for claim in claims(sentence):
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
    unsupported: list[Claim] = field(default_factory=list)
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
        self._stated: set[tuple[ClaimKind, str]] = set()  # the facts of what stood

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
        return bool(self._stated & _evidence_keys(passage.text))

    def _check(self, sentence: str) -> str:
        self.report.sentences += 1
        missing = unsupported(sentence, self.evidence)
        if missing:
            self.report.dropped += 1
            self.report.unsupported.extend(missing)
            return ""
        self._kept = self._kept or bool(_words(sentence))
        self._stated |= {(c.kind, c.key) for c in claims(sentence) if c.kind != "quote"}
        return sentence


def _evidence_keys(text: str) -> set[tuple[ClaimKind, str]]:
    keys: set[tuple[ClaimKind, str]] = {(c.kind, c.key) for c in claims(text)}
    for kind, key in list(keys):
        if kind == "amount":
            keys.add(("number", key.split(" ")[0]))  # "45 euros" also says "45"
        elif kind == "email":
            keys.add(("url", key.split("@", 1)[1]))  # and names its domain
        elif kind == "date" and key.count(" ") >= 1 and key.split(" ")[1].isdigit():
            keys.add(("number", key.split(" ")[1]))  # "March 31" says "31" too
        elif kind == "number" and ":" in key:
            keys.add(("number", key.split(":")[0]))  # "10:30" says "10" too
    for match in _NUMBER_WORD.finditer(text):
        keys.add(("number", str(_word_value(match))))
    return keys


def _dates(sentence: str) -> list[tuple[ClaimKind, str, tuple[int, int], str]]:
    out: list[tuple[ClaimKind, str, tuple[int, int], str]] = []
    spans: list[tuple[int, int]] = []
    for number, pattern in enumerate(_DATE_PATTERNS):
        for match in pattern.finditer(sentence):
            first, second = match.group(1), match.group(2)
            month_text, day = (first, second) if number == 0 else (second, first)
            month = _MONTH_OF.get(month_text.lower().rstrip("."))
            if month is None or not 1 <= int(day) <= 31 or _inside(match.span(), spans):
                continue
            year = match.group(3)
            key = f"{month} {int(day)}" + (f" {year}" if year else "")
            out.append(("date", key, match.span(), match.group(0).strip()))
            spans.append(match.span())
    for match in _ISO_DATE.finditer(sentence):
        year, month_number, day = match.groups()
        if 1 <= int(month_number) <= 12 and not _inside(match.span(), spans):
            key = f"{_MONTHS[int(month_number) - 1]} {int(day)} {year}"
            out.append(("date", key, match.span(), match.group(0)))
            spans.append(match.span())
    for match in _SLASH_DATE.finditer(sentence):
        if not _inside(match.span(), spans):
            out.append(("date", match.group(0), match.span(), match.group(0)))
            spans.append(match.span())
    for match in _MONTH_ALONE.finditer(sentence):
        if not _inside(match.span(), spans):
            out.append(("date", match.group(1).lower(), match.span(), match.group(0)))
    return out


def _unwrap(text: str) -> str:
    """Join the lines of each paragraph (documents wrap sentences); list items and table rows
    keep their own lines."""
    return re.sub(r"(?<=\S)\n(?![\n\s]*(?:[-*•|#]|\d{1,2}[.)])\s)(?=\S)", " ", text)


def _number_key(value: str) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", value):
        value = value.replace(",", "")
    if ":" in value and value.endswith(":00"):
        value = value[:-3]
    if "." in value and re.fullmatch(r"\d+\.\d+", value):
        value = value.rstrip("0").rstrip(".")
    if value.isdigit():
        return value.lstrip("0") or "0"
    return value


def _unit(match: re.Match[str]) -> str:
    before = (match.group("before") or "").strip()
    after = " ".join((match.group("after") or "").lower().split())
    return _CURRENCY_BEFORE.get(before, "") or _CURRENCY_AFTER.get(after, "")


def _word_value(match: re.Match[str]) -> int:
    tens, small, unit = match.group(1), match.group(2), match.group(3)
    if tens:
        return _TENS[tens.lower()] + (_SMALL[small.lower()] if small else 0)
    return 1 if unit.lower() == "one" else _UNITS[unit.lower()]


def _url_key(url: str) -> str:
    key = url.lower().rstrip(".,;:!?")
    key = re.sub(r"^https?://", "", key)
    key = key.removeprefix("www.")
    return key.rstrip("/")


def _inside(span: tuple[int, int], taken: Sequence[tuple[int, int]]) -> bool:
    return any(start < span[1] and span[0] < end for start, end in taken)


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())
