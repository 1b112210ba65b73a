"""report.html: one static page to share a results folder (no server, no script, relative paths).

It holds every leaderboard (``leaderboard.md``, rendered as it is written, so a line any part of the
report adds under a table shows here too), then every plot of ``plots/`` with a caption that says
what it shows, sample grids last. Images are linked by relative path, so the folder can be zipped,
copied or served as it is; ``report.html`` is rewritten with the rest of the report.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from benchmark.core.files import write_text_atomic

# plot file prefix -> (section, what the figure shows)
CAPTIONS = {
    "per_class": ("Per-class curves", "Per-class FID, recall, coverage and label accuracy against each class's "
                  "training size (log axis), one line per method, real data dashed, ±1 std over seeds as a band."),
    "diversity": ("Per-class curves", "Per-class in-manifold Vendi ratio (1 = as diverse as held-out real images), "
                  "coverage and memorised fraction (feature space solid, pixels dotted) against class size."),
    "groups": ("Groups", "Many / medium / few: each metric per class group, one bar per method."),
    "sweep": ("Imbalance sweep", "Each metric against the imbalance ratio, one line per method."),
    "samples": ("Sample grids", "One row of generated samples per class, head class at the top, tail at the bottom."),
    "neighbours": ("Copies", "The few-shot classes' most copy-like generated images above their nearest training "
                   "images; d1/d2 under each (below 0.33 counts as a copy)."),
}  # fmt: skip
SECTIONS = ("Per-class curves", "Groups", "Imbalance sweep", "Copies", "Sample grids", "Other plots")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
blockquote { border-left: 4px solid #c90; margin: 0.5em 0; padding: 0.2em 0.8em; background: #fff8e6; }
"""


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"(?<![\w*])\*(.+?)\*(?![\w*])", r"<i>\1</i>", text)


def markdown_to_html(md: str) -> str:
    """The Markdown the leaderboards are written in: headings, tables, lists, quotes, paragraphs."""
    out, table, items = [], [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")  # fmt: skip
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if not line.strip():
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            level = len(heading.group(1)) + 1  # the page's own title is the h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        else:
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _caption(path: Path) -> tuple[str, str]:
    for prefix, (section, text) in CAPTIONS.items():
        if path.name.startswith(prefix + "_"):
            return section, text
    return "Other plots", ""


def write_html(out: Path) -> Path:
    """Write ``out/report.html`` from the leaderboards and plots already in ``out``."""
    out = Path(out)
    parts = [f"<h1>LTGen-Bench report: {html.escape(out.resolve().name)}</h1>"]
    files = [n for n in ("leaderboard_full.md", "leaderboard.csv", "leaderboard_paired.csv", "leaderboard_per_class.csv",
                         "leaderboard.tex", "results.csv") if (out / n).exists()]  # fmt: skip
    if files:
        parts.append("<p>Files: " + " · ".join(f'<a href="{n}">{n}</a>' for n in files) + "</p>")
    board = out / "leaderboard.md"
    if board.exists():
        parts.append(markdown_to_html(board.read_text()))
    plots = sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else []
    by_section: dict[str, list[Path]] = {}
    for path in plots:
        by_section.setdefault(_caption(path)[0], []).append(path)
    for section in SECTIONS:
        if section not in by_section:
            continue
        parts.append(f"<h2>{section}</h2>")
        for path in by_section[section]:
            rel = path.relative_to(out).as_posix()
            text = _caption(path)[1]
            label = html.escape(path.stem)
            pdf = path.with_name(path.stem + ".pdf")  # stems hold dots (0.01): no with_suffix
            link = f' <a href="{html.escape(pdf.relative_to(out).as_posix())}">PDF</a>' if pdf.exists() else ""
            parts.append(f'<figure><img src="{html.escape(rel)}" alt="{label}" loading="lazy">'
                         f"<figcaption><b>{label}</b>. {html.escape(text)}{link}</figcaption></figure>")  # fmt: skip
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>LTGen-Bench report: {html.escape(out.resolve().name)}</title><style>{STYLE}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip
    return write_text_atomic(out / "report.html", page)
