"""Plain text out of a MediaWiki XML dump, by fixed rules (same text every run).

Rules, applied in this order to each article (namespace 0, redirects skipped):

1. Cut the article at its first ``References`` / ``See also`` / ``Notes`` /
   ``Further reading`` / ``External links`` / ``Bibliography`` / ``Sources``
   heading (what follows is lists of citations, not prose).
2. Drop comments ``<!-- -->``, ``<ref>…</ref>`` and ``<ref …/>``, ``<math>``,
   ``<gallery>``, ``<timeline>`` and ``<table>`` elements with their content.
3. Drop templates ``{{…}}`` and tables ``{|…|}``, innermost first, so nesting
   is handled.
4. Links: ``[[File:…]]``, ``[[Image:…]]``, ``[[Category:…]]`` and
   interlanguage links are dropped; ``[[target|label]]`` becomes ``label`` and
   ``[[target]]`` becomes ``target`` (innermost first); ``[http://… label]``
   becomes ``label``, a bare ``[http://…]`` is dropped.
5. Remaining HTML tags are dropped (their content stays), entities are
   unescaped, bold/italic quotes (``''``, ``'''``) are removed.
6. Headings ``== X ==`` become a line ``X``; list markers (``*#:;``) at line
   starts are removed; lines left with only markup (``|``, ``!``, ``{``, ``}``)
   are dropped; runs of spaces become one, blank lines collapse to one.

Articles are joined with a blank line, each starting with its title.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

_TAIL_SECTIONS = re.compile(
    r"^=+\s*(References|See also|Notes|Notes and references|Further reading|External links|"
    r"Bibliography|Sources|Citations|Footnotes)\s*=+\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_DROP_ELEMENTS = re.compile(
    r"<(ref|math|gallery|timeline|table|score|syntaxhighlight|source|imagemap)\b[^>]*?/>|"
    r"<(ref|math|gallery|timeline|table|score|syntaxhighlight|source|imagemap)\b[^>]*>.*?</\2\s*>",
    re.DOTALL | re.IGNORECASE,
)
_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.DOTALL)
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.DOTALL)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.DOTALL)
_DROP_LINK = re.compile(r"^\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s+([^\]]*))?\]")
_TAG = re.compile(r"</?[a-zA-Z][^>]*?/?>")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_LIST = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_MARKUP_LINE = re.compile(r"^\s*[|!{}].*$", re.MULTILINE)
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n+")


def _innermost(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def _link(m: re.Match) -> str:
    inner = m.group(1)
    if _DROP_LINK.match(inner):
        return ""
    return inner.rsplit("|", 1)[-1]


def strip_markup(wikitext: str) -> str:
    """Plain text of one article's wikitext (rules in the module docstring)."""
    text = wikitext
    cut = _TAIL_SECTIONS.search(text)
    if cut:
        text = text[: cut.start()]
    text = _COMMENT.sub("", text)
    text = _DROP_ELEMENTS.sub("", text)
    text = _innermost(_TEMPLATE, "", text)
    text = _innermost(_TABLE, "", text)
    text = _innermost(_LINK, _link, text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _LIST.sub("", text)
    text = _MARKUP_LINE.sub("", text)
    text = _SPACES.sub(" ", text)
    lines = [line.strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def articles(path: Path):
    """Yield ``(title, wikitext)`` for the main-namespace, non-redirect pages of a
    MediaWiki XML export (``.xml`` or ``.xml.bz2``), in file order."""
    with open(path, "rb") as probe:
        compressed = probe.read(3) == b"BZh"  # bz2 magic; cached files have no suffix
    with (bz2.open if compressed else open)(path, "rb") as f:
        title = ns = text = None
        redirect = False
        for _, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = elem.text
            elif tag == "ns":
                ns = elem.text
            elif tag == "redirect":
                redirect = True
            elif tag == "text":
                text = elem.text or ""
            elif tag == "page":
                if ns == "0" and not redirect and not text.lstrip().upper().startswith("#REDIRECT"):
                    yield title, text
                title = ns = text = None
                redirect = False
                elem.clear()


def wiki_text(path: Path, max_chars: int | None = None) -> str:
    """Stripped articles of a dump, joined by blank lines; stops once ``max_chars`` are reached."""
    parts, total = [], 0
    for title, raw in articles(path):
        body = strip_markup(raw)
        if not body:
            continue
        part = f"{title}\n\n{body}"
        parts.append(part)
        total += len(part) + 2
        if max_chars is not None and total >= max_chars:
            break
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]
