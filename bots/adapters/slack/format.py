"""Text between Slack and the model: Markdown -> Slack mrkdwn, and Slack's markup -> plain text.

Everything the model writes is untrusted: it could contain `<!channel>`, `<@U123>` or a plain
`@here`. `to_mrkdwn` escapes Slack's control characters (`&`, `<`, `>`) everywhere, so no
generated text can become a mention or a link Slack did not see in Markdown, and breaks the
plain-text broadcast words with a zero-width space. `neutralise_markdown` does the same for
Markdown sent as-is (the streaming API renders Markdown itself).
"""

from __future__ import annotations

import re
from urllib.parse import quote

ZWSP = "\u200b"
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
QUOTE = re.compile(r"^\s*>\s?(.*)$")
RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<((?:https?://|mailto:)[^>\s]+)>")
BARE_URL = re.compile(r"(?<![\w/])(https?://[^\s<>()\[\]]+[^\s<>()\[\].,;:!?'\"])")
BOLD = re.compile(r"(\*\*|__)(?!\s)(.+?)(?<!\s)\1")
ITALIC_STAR = re.compile(r"(?<![*\w])\*(?![\s*])([^*\n]+?)(?<![\s*])\*(?![*\w])")
STRIKE = re.compile(r"~~(?!\s)(.+?)(?<!\s)~~")
BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
SLACK_SPECIAL = re.compile(r"<(?=[!@#])")
SAFE_SCHEMES = ("http://", "https://", "mailto:")
# Private-use characters stand in for formatting while the text around them is escaped.
BOLD_MARK = "\ue000"
SLOT = "\ue001"

# Slack markup in incoming text: <@U123>, <@U123|name>, <#C123|general>, <!here>, <url|label>.
USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
CHANNEL_REF = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
SPECIAL_REF = re.compile(r"<!([a-z^A-Z0-9]+)(?:\|([^>]*))?>")
LINK_REF = re.compile(r"<([a-z][a-z0-9+.-]*:[^|>]+)(?:\|([^>]*))?>")


def escape(text: str) -> str:
    """Escape Slack's three control characters, as its formatting docs require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def defuse_broadcasts(text: str) -> str:
    """`@here` and friends in plain text, broken so Slack never reads them as a ping."""
    return BROADCAST.sub(lambda m: "@" + ZWSP + m.group(1), text)


def neutralise_markdown(text: str) -> str:
    """Markdown for Slack's own renderer, with every mention and broadcast defused."""
    return defuse_broadcasts(SLACK_SPECIAL.sub("<" + ZWSP, text))


def to_mrkdwn(markdown: str) -> str:
    """Convert the model's Markdown to Slack mrkdwn: bold, italics, strikes, links, headings,
    lists, quotes and code blocks; escaped so no text becomes a mention."""
    out: list[str] = []
    in_code = ""
    for line in markdown.split("\n"):
        fence = FENCE.match(line)
        if in_code:
            if fence and fence.group(1)[:3] == in_code[:3] and not fence.group(2):
                out.append("```")
                in_code = ""
            else:
                out.append(escape(line))
            continue
        if fence:
            # Slack shows a language label as code text, so it is dropped.
            in_code = fence.group(1)
            out.append("```")
            continue
        out.append(_block_line(line))
    if in_code:
        out.append("```")
    return "\n".join(out)


def _block_line(line: str) -> str:
    if RULE.match(line):
        return "──────────"
    heading = HEADING.match(line)
    if heading:
        title = _inline(heading.group(1)).replace("*", "")
        return f"*{title}*" if title else ""
    bullet = BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}• {_inline(bullet.group(2))}"
    quote = QUOTE.match(line)
    if quote:
        return "> " + _inline(quote.group(1))
    return _inline(line)


def _inline(text: str) -> str:
    """Inline Markdown -> mrkdwn; code spans and links are set aside while the rest is escaped."""
    slots: list[str] = []

    def keep(rendered: str) -> str:
        slots.append(rendered)
        return f"{SLOT}{len(slots) - 1}{SLOT}"

    text = text.replace(SLOT, "").replace(BOLD_MARK, "")
    text = CODE_SPAN.sub(lambda m: keep("`" + escape(m.group(2)) + "`"), text)
    text = LINK.sub(lambda m: keep(_link(m.group(2), m.group(1))), text)
    text = AUTOLINK.sub(lambda m: keep(_link(m.group(1), "")), text)
    text = BARE_URL.sub(lambda m: keep(_link(m.group(1), "")), text)
    text = defuse_broadcasts(escape(text))
    text = BOLD.sub(lambda m: f"{BOLD_MARK}{m.group(2)}{BOLD_MARK}", text)
    text = ITALIC_STAR.sub(r"_\1_", text)
    text = STRIKE.sub(r"~\1~", text)
    text = text.replace(BOLD_MARK, "*")
    return re.sub(f"{SLOT}(\\d+){SLOT}", lambda m: slots[int(m.group(1))], text)


def _link(url: str, label: str) -> str:
    """`<url|label>` for a web or mail link; anything else stays visible text, never markup."""
    if not url.lower().startswith(SAFE_SCHEMES):
        shown = f"{label} ({url})" if label else url
        return defuse_broadcasts(escape(shown))
    # Characters that would end or split Slack's <url|label> are percent-encoded.
    safe_url = quote(url, safe=":/?#[]@!$&'()*+,;=%~-._")
    safe_url = safe_url.replace("&", "&amp;")
    if not label:
        return f"<{safe_url}>"
    shown = defuse_broadcasts(escape(label.replace("|", "/")))
    return f"<{safe_url}|{shown}>"


def from_mrkdwn(text: str, *, strip_user: str = "") -> str:
    """Slack message text -> plain text for the model; mentions of `strip_user` are removed."""
    if strip_user:
        text = re.sub(rf"<@{re.escape(strip_user)}(?:\|[^>]*)?>", "", text)
    text = USER_REF.sub(lambda m: "@" + (m.group(2) or m.group(1)), text)
    text = CHANNEL_REF.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = SPECIAL_REF.sub(lambda m: "@" + (m.group(2) or m.group(1).split("^")[0]), text)

    def link(m: re.Match[str]) -> str:
        url, label = m.group(1), m.group(2)
        return f"{label} ({url})" if label and label != url else url

    text = LINK_REF.sub(link, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()
