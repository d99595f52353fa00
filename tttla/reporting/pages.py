"""The pages of a report: its Markdown converted to one self-contained HTML page, and both
written with their figures.

The HTML is self-contained: maths is converted to MathML at build time (``latex2mathml``),
styles are inline, figures are embedded as data URIs, and it names no external URL, so it
renders offline.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from derivations.printing import prose_subscripts

__all__ = ["markdown_to_html", "html_page", "write_pages"]


def _mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        out = convert(latex, display="block" if display else "inline")
    except Exception:  # keep the report whole; show the source instead
        return f"<code>{html.escape(latex)}</code>"
    out = _DOUBLE_STRUCK.sub(lambda m: f"<{m[1]}>{chr(0x1D7D8 + int(m[2]))}</{m[1]}>", out)
    out = out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "")
    # a wide equation scrolls inside its own box, never the page
    return f'<div class="eq">{out}</div>' if display else out


#: Chromium ignores mathvariant="double-struck" (MathML Core), so 𝟙 is written as its own character
_DOUBLE_STRUCK = re.compile(r'<(m[ni]) mathvariant="double-struck">([0-9])</m[ni]>')



_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
          "pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}table{border-collapse:collapse;margin:.6rem 0}"
          "td,th{border:1px solid #bbb;padding:.2rem .6rem;vertical-align:top}th{background:#eee}"
          ".eq{overflow-x:auto;max-width:100%}math[display=block]{margin:.6rem 0}img{max-width:100%}")

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")


def _image(alt: str, src: str, images: dict) -> str:
    """``<img>`` with the PNG bytes of ``images[src]`` as a data URI (never a link)."""
    if src not in images:
        raise KeyError(f"image {src!r} is referenced but not given")
    data = base64.b64encode(images[src]).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def markdown_to_html(md: str, images: dict | None = None) -> str:
    """A small Markdown subset (headings, lists, tables, code, paragraphs, $ maths, images on
    their own line) to HTML; ``images`` maps each image's file name to its PNG bytes, which are
    embedded as data URIs so the page needs no other file."""
    images = images or {}
    out, in_code, in_list, table = [], False, False, []

    def inline(text):
        parts = re.split(r"(\$[^$]+\$|`[^`]+`|\*\*[^*]+\*\*)", text)
        res = []
        for p in parts:
            if p.startswith("$") and p.endswith("$") and len(p) > 1:
                res.append(_mathml(p[1:-1], False))
            elif p.startswith("`") and p.endswith("`") and len(p) > 1:
                res.append(f"<code>{html.escape(p[1:-1])}</code>")
            elif p.startswith("**") and p.endswith("**"):
                res.append(f"<strong>{html.escape(p[2:-2])}</strong>")
            else:
                res.append(html.escape(prose_subscripts(p)))
        return "".join(res)

    def flush_table():
        if table:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table]
            has_head = len(cells) > 1 and all(set(c) <= set("-: ") for c in cells[1])
            head = ("<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr></thead>"
                    if has_head else "")
            rows = cells[2:] if has_head else cells
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table>{head}<tbody>{body}</tbody></table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        image = _IMAGE.match(line.strip())
        if image:
            out.append(_image(image.group(1), image.group(2), images))
        elif line.startswith("$$") and line.endswith("$$") and len(line) > 4:
            out.append(_mathml(line[2:-2], True))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def html_page(title: str, body: str) -> str:
    """A whole HTML document around ``body``: inline styles, no script, no external URL."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_pages(directory, markdown: str, page: str, images: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the images ``report.md`` links to (``name → PNG bytes``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md, html_path = d / "report.md", d / "report.html"
    md.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    for name, data in (images or {}).items():
        (d / name).write_bytes(data)
    return md, html_path
