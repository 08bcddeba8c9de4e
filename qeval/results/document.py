"""The report as a list of blocks, rendered to Markdown (``report.md``) and to one
self-contained HTML file (``report.html``: styles inline, plots embedded as base64,
no scripts, nothing fetched).

A block is a tuple: ``("h1"|"h2", text)``, ``("p", text)``, ``("ul", [item, ...])``
where an item is text or ``(text, [sub-items])``, ``("table", headers, rows)`` and
``("img", file name, alt text)``. Text may hold ``**bold**`` and ```code```.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1f23; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; white-space: normal; } td:first-child, th:first-child { text-align: left; }
span.pm { display: block; font-size: 85%; color: #57606a; }
td:last-child { white-space: normal; min-width: 7em; } div.wide { overflow-x: auto; }
tr.fail td { background: #fdecec; } tr.pass td:last-child { color: #116329; font-weight: 600; }
code { background: #f3f5f7; padding: 0 3px; border-radius: 3px; font-size: 90%; }
p.verdict { font-size: 1.1em; padding: .6em .9em; border-left: 5px solid #116329; background: #eef8f0; }
p.verdict.fail { border-color: #b3261e; background: #fdecec; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            for item in block[1]:
                text, subs = item if isinstance(item, tuple) else (item, [])
                lines.append(f"- {text}")
                lines += [f"  - {s}" for s in subs]
            lines.append("")
        elif kind == "table":
            headers, rows = block[1], block[2]
            numeric = [bool(rows) and all(re.match(r"^[-+]?[\d.]", r[i]) or r[i] == "-" for r in rows)
                       for i in range(len(headers))]
            lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _inline(text: str) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<strong>{_inline(m.group(1))}</strong>" if m.group(1) is not None
                   else f"<code>{html.escape(m.group(2))}</code>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


_SPREAD = re.compile(r" ± | \(")


def _html_cell(text: str) -> str:
    """A value over its spread or recovery (``23.11 ± 6.43`` in two lines): the wide tables fit a laptop screen."""
    m = _SPREAD.search(text)
    if m is None or m.start() == 0:
        return html.escape(text)
    return f'{html.escape(text[:m.start()])}<span class="pm">{html.escape(text[m.start() + 1:])}</span>'


def _row_class(row: list[str]) -> str:
    last = row[-1] if row else ""
    return ' class="fail"' if last.startswith("FAIL") else ' class="pass"' if last == "PASS" else ""


def to_html(blocks: list[tuple], images: dict[str, bytes], title: str) -> str:
    """One HTML file; ``images`` maps an ``img`` block's file name to its PNG bytes (embedded)."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            text = block[1]
            cls = ""
            if text.startswith("**Verdict"):
                cls = ' class="verdict fail"' if "No policy passes" in text else ' class="verdict"'
            body.append(f"<p{cls}>{_inline(text)}</p>")
        elif kind == "ul":
            items = []
            for item in block[1]:
                text, subs = item if isinstance(item, tuple) else (item, [])
                inner = "".join(f"<li>{_inline(s)}</li>" for s in subs)
                items.append(f"<li>{_inline(text)}" + (f"<ul>{inner}</ul>" if subs else "") + "</li>")
            body.append("<ul>" + "".join(items) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join(f"<tr{_row_class(r)}>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>"
                           for r in block[2])
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif kind == "img":
            data = images.get(block[1])
            if data is not None:
                b64 = base64.b64encode(data).decode("ascii")
                body.append(f'<p><img alt="{html.escape(block[2])}" src="data:image/png;base64,{b64}"></p>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def read_images(blocks: list[tuple], folder: Path) -> dict[str, bytes]:
    out = {}
    for block in blocks:
        if block[0] == "img" and (folder / block[1]).is_file():
            out[block[1]] = (folder / block[1]).read_bytes()
    return out
