"""The report as one self-contained HTML file.

Figures are embedded as base64 PNG data URIs and the CSS is inline, so the file opens offline,
can be mailed or archived alone, and a browser loads nothing but the file itself (the tests
check this in headless Chromium). There is no JavaScript.
"""

from __future__ import annotations

import base64
import html
import os
from datetime import UTC, datetime
from pathlib import Path

from advface import __version__
from advface.report.extras import image_caption, image_id, image_names
from advface.report.figures import all_figures, png_bytes
from advface.report.load import RunData
from advface.report.tables import Table, all_tables
from advface.report.text import Section, build_sections, figure_caption

CSS = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d9dde5; --accent: #1f5fae; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #f6f7f9;
  font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 64px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 0 1px var(--line); }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 2px solid var(--line); }
p, li { max-width: 860px; }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 12px; }
nav.toc { font-size: 14px; background: #f2f4f8; border: 1px solid var(--line);
  border-radius: 6px; padding: 8px 16px; margin: 16px 0; }
nav.toc ol { margin: 4px 0; padding-left: 20px; columns: 2; }
a { color: var(--accent); }
figure { margin: 18px 0 24px; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); max-width: 860px; margin: 6px auto 0;
  text-align: left; }
.table-wrap { overflow-x: auto; margin: 14px 0 20px; }
table { border-collapse: collapse; font-size: 12.5px; min-width: 50%; }
caption { text-align: left; font-weight: 600; font-size: 14px; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
  vertical-align: top; white-space: nowrap; }
td:nth-child(3) { white-space: normal; }
th { background: #eef1f6; white-space: normal; vertical-align: bottom; }
tr.baseline td { color: var(--muted); font-style: italic; background: #fafbfc; }
.note { font-size: 12.5px; color: var(--muted); margin: 4px 0 0; }
.nofig { color: #8a5a00; background: #fff7e6; border: 1px solid #f0d9a8; border-radius: 4px;
  padding: 6px 10px; font-size: 13px; }
details > summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
section#missing .table-wrap td { white-space: normal; }
"""


def _figure_html(name: str, number: int, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = html.escape(caption)
    return (f'<figure id="fig-{html.escape(name)}"><img src="data:image/png;base64,{data}" '
            f'alt="Figure {number}: {cap}"><figcaption><b>Figure {number}.</b> {cap}'
            "</figcaption></figure>")


def _table_html(table: Table) -> str:
    body = table.to_html()
    if len(table.rows) > 14:  # long per-cell tables stay out of the reading flow until opened
        return (f"<details><summary>{html.escape(table.title)} ({len(table.rows)} rows) — "
                f"show</summary>{body}</details>")
    return body


def section_html(section: Section, figures: dict[str, bytes], tables: dict[str, Table | None],
                 captions: dict[str, str], numbers: dict[str, int],
                 with_figures: bool = True, with_title: bool = True) -> str:
    """One section; figures without data show a visible note instead of a blank image.

    `with_figures=False` leaves figure blocks out (the notebook draws them in their own cells).
    """
    title = f"<h2>{html.escape(section.title)}</h2>" if with_title else ""
    parts = [f'<section id="{html.escape(section.key)}">{title}']
    for block in section.blocks:
        if block.kind == "p":
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif block.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items)
                         + "</ul>")
        elif block.kind == "figure" and with_figures:
            png = figures.get(block.name)
            if png is None:
                parts.append(f'<p class="nofig">Figure “{html.escape(block.name)}” was not '
                             "drawn: the run holds no data for it.</p>")
            else:
                parts.append(_figure_html(block.name, numbers[block.name], png,
                                          captions.get(block.name, block.name)))
        elif block.kind == "image" and with_figures:
            png = figures.get(block.name)
            if png is None:
                parts.append(f'<p class="nofig">Image “{html.escape(block.name)}” could not be '
                             "read from the run directory.</p>")
            else:
                parts.append(_figure_html(image_id(block.name), numbers[block.name], png,
                                          captions.get(block.name, block.name)))
        elif block.kind == "table":
            table = tables.get(block.name)
            if table is not None:
                parts.append(_table_html(table))
    parts.append("</section>")
    return "\n".join(parts)


def place_unreferenced(sections: list[Section], names: list[str]) -> None:
    """Make sure every drawn figure appears: unreferenced ones go to the end of Results."""
    referenced = {b.name for s in sections for b in s.blocks if b.kind == "figure"}
    target = next((s for s in sections if s.key == "results"), sections[-1])
    for name in names:
        if name not in referenced:
            target.figure(name)


def read_images(run: RunData, names: list[str]) -> dict[str, bytes | None]:
    """PNG bytes of image blocks; an absent or unreadable file is None (and listed)."""
    out: dict[str, bytes | None] = {}
    for name in names:
        path = run.run_dir / name
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None and not data.startswith(b"\x89PNG"):
            data = None
            if name not in run.unreadable_images:
                run.unreadable_images.append(name)
        out[name] = data
    return out


def render_html(run: RunData, figures: dict[str, bytes | None],
                images: dict[str, bytes | None] | None = None) -> str:
    """The whole document as a string (figures already rendered to PNG bytes).

    `images`: bytes of the sections' image blocks (interpret figures), read here if not given.
    """
    drawn = {k: v for k, v in figures.items() if v is not None}
    undrawn = [k for k, v in figures.items() if v is None]
    if images is None:  # read before the sections, so Missing results lists a broken one
        images = read_images(run, image_names(run))
    sections = build_sections(run, undrawn)
    place_unreferenced(sections, list(drawn))
    tables = all_tables(run, undrawn)
    shown = {**drawn, **{k: v for k, v in images.items() if v is not None}}
    numbers: dict[str, int] = {}
    for s in sections:
        for b in s.blocks:
            if b.kind in ("figure", "image") and b.name in shown and b.name not in numbers:
                numbers[b.name] = len(numbers) + 1
    captions = {name: figure_caption(run, name) for name in drawn}
    captions.update({name: image_caption(run, name) for name in images})
    toc = "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(section_html(s, shown, tables, captions, numbers) for s in sections)
    title = f"advface report — {run.run_dir.resolve().name}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"Run directory <code>{html.escape(str(run.run_dir.resolve()))}</code> · status "
            f"{html.escape(run.status)} · generated {generated} by advface {__version__}. "
            "Every number below is computed from the run directory.")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{meta}</p>"
        f"<nav class=\"toc\"><b>Contents</b><ol>{toc}</ol></nav>\n{body}\n</main></body></html>\n"
    )


def write_html(run: RunData, path: str | Path,
               figures: dict[str, bytes | None] | None = None,
               images: dict[str, bytes | None] | None = None) -> Path:
    """Write the self-contained report; draws every figure itself unless given PNG bytes."""
    if figures is None:
        figures = {name: None if fig is None else png_bytes(fig)
                   for name, fig in all_figures(run).items()}
    text = render_html(run, figures, images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves a half-written report behind.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
