"""Keep the documentation's CLI reference (docs/cli.md) in step with ``--help``.

``python -m benchmark.devtools.clidoc`` rewrites the block between ``<!-- CLI -->`` and ``<!-- /CLI -->``
in docs/cli.md from the argument parser itself; ``tests/test_cli.py`` fails when they differ.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmark.cli import build_parser

START, END = "<!-- CLI -->", "<!-- /CLI -->"
WIDTH = "100"  # argparse wraps to $COLUMNS; fixed so the text does not depend on the terminal


def render() -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        parts = [
            "# CLI reference",
            "",
            "`python run_benchmark.py ...` and the installed `ltgen-bench ...` are the same program. Without a "
            "command it runs `run` with the default preset (`demo`). Exit status: 0 success, 1 a grid cell failed "
            "(the others finished) or the disk is full, 2 bad input (see docs/bad-input.md).",
            "",
            "```text", parser.format_help().rstrip(), "```", "",
        ]  # fmt: skip
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, p in sub.choices.items():
            parts += [f"## `{name}`", "", "```text", p.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def current_block(readme: str) -> str:
    return readme[readme.index(START) + len(START) + 1 : readme.index(END)]


def update(path: Path) -> bool:
    readme = path.read_text()
    new = readme[: readme.index(START)] + START + "\n" + render() + END + readme[readme.index(END) + len(END) :]
    changed = new != readme
    path.write_text(new)
    return changed


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmark.devtools.clidoc",
                                description="Rewrite the generated block of the CLI reference from --help.")
    p.add_argument("page", nargs="?", default="docs/cli.md", help="the page holding the block (default: docs/cli.md)")
    target = Path(p.parse_args(argv).page)
    if not target.is_file() or START not in target.read_text() or END not in target.read_text():
        p.error(f"{target} is not a page with the generated block ({START.strip()} ... {END.strip()}): "
                "run from the repository root, or name the page")
    print(f"{target}: {'updated' if update(target) else 'already in step'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
