"""What an answer asserts that its documents must hold: numbers, amounts, dates, e-mail
addresses, URLs and quoted phrases, found in a sentence and normalised so that the forms a
document and an answer may use meet ("1,000" = "1000", "ten" = "10", "45 euros" = "45 EUR",
"€45" too, "https://www.x.org/" = "x.org", "31st of March" = "March 31").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["number", "amount", "date", "email", "url", "quote"]

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
_LEADING_MARKER = re.compile(r"^\s*\d{1,2}[.)](?=\s)")
_WORDS = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Claim:
    """Something an answer asserts that the evidence must hold: its kind and its text."""

    kind: ClaimKind
    text: str  # as the answer wrote it
    key: str  # the normalised form that is looked up


def find(sentence: str) -> list[Claim]:
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
        if words(phrase):
            found.append(Claim("quote", phrase, " ".join(words(phrase))))
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


def evidence_keys(text: str) -> set[tuple[ClaimKind, str]]:
    """What `text` holds as evidence: its claims, and the forms they imply ("45 euros" also says
    "45", an address names its domain, "March 31" says "31", "ten" says "10")."""
    keys: set[tuple[ClaimKind, str]] = {(c.kind, c.key) for c in find(text)}
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


def words(text: str) -> list[str]:
    """The words of `text`, lower case."""
    return _WORDS.findall(text.lower())
