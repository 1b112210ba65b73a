"""The package layers, lowest first: core <- data <- engine <- methods <- eval <- harness <- report <- cli
<- devtools.  A module imports only from its own layer or the layers below it, so each layer can be
used (and tested) without the ones above it: a report is drawn without loading the training stack,
a method is written against the engine without the evaluator.

The order alone would let ``eval`` use the engine and ``report`` use anything below it.  Two layers
are narrower, because of what they are for:

* ``eval`` scores images from any model (``ltgen-bench evaluate`` takes samples of models trained
  elsewhere): it imports only ``core`` and ``data``, never the training stack (``engine``, ``methods``);
* ``report`` redraws leaderboards and plots from ``results.csv`` alone (``ltgen-bench report`` on a
  laptop, on a folder copied off a cluster): it imports only ``core``, itself and ``harness.results``
  (the table's reader), so it never loads torch, a method or the evaluator.

Every import counts, also one made inside a function: a lazy import still ties the layers together
(and still loads the upper layer when it runs).  ``if TYPE_CHECKING:`` blocks are exempt (they never
run).  An import allowed across these rules is named in ALLOWED with its reason (none today).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "data", "engine", "methods", "eval", "harness", "report", "cli", "devtools"]

# layers narrower than the order: layer -> (layers it may import, further modules it may import)
NARROW: dict[str, tuple[set[str], set[str]]] = {
    "eval": ({"core", "data", "eval"}, set()),
    "report": ({"core", "report"}, {"benchmark.harness.results"}),
}
# (importing module, imported module): allowed across the rules, and why
ALLOWED: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this project ('benchmark.eval.trust' -> 'eval'), else None."""
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    if parts[0] != "benchmark" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path``, relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, node.lineno))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # 'from methods import contracts'
    return out


def breaches(files: list[Path]) -> list[str]:
    found: dict[tuple[str, int], str] = {}  # one line per import statement
    for path in files:
        here = module_name(path)
        mine = layer_of(here)
        if mine is None:
            continue
        for target, line in imports_of(path):
            theirs = layer_of(target)
            if theirs is None:
                continue
            layers, modules = NARROW.get(mine, (set(LAYERS[: LAYERS.index(mine) + 1]), set()))
            if theirs in layers or target in modules or target.rpartition(".")[0] in modules:
                continue
            if (here, target) in ALLOWED or (here, target.rpartition(".")[0]) in ALLOWED:
                continue
            found.setdefault((str(path.relative_to(ROOT)), line), f"({mine}) imports {target} ({theirs})")
    return [f"{where}:{line} {what}" for (where, line), what in sorted(found.items())]


def project_files() -> list[Path]:
    return sorted([*(ROOT / "benchmark").rglob("*.py"), *(ROOT / "methods").rglob("*.py")])


def test_every_import_follows_the_layer_order():
    found = breaches(project_files())
    assert not found, "imports against the layer order (" + " <- ".join(LAYERS) + "):\n" + "\n".join(found)


@pytest.mark.parametrize("source, target", [
    ("benchmark/report/extra.py", "from benchmark.harness.cells import Cell"),
    ("benchmark/core/extra.py", "import methods"),
    ("methods/extra.py", "from benchmark.eval import trust"),
    ("benchmark/engine/extra.py", "def f():\n    from benchmark.eval.trust import x\n"),
    ("benchmark/report/extra.py", "from benchmark.eval.trust import UNTRUSTED_NOTE"),
    ("benchmark/eval/extra.py", "from benchmark.engine.checkpoint import atomic_save"),
    ("benchmark/report/extra.py", "from ..harness import cells"),
])  # fmt: skip
def test_an_import_against_the_order_is_found(tmp_path, monkeypatch, source, target):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    path = tmp_path / source
    path.parent.mkdir(parents=True)
    path.write_text(target + "\n")
    assert len(breaches([path])) >= 1


def test_imports_downwards_and_type_checking_blocks_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    path = tmp_path / "benchmark" / "harness" / "extra.py"
    path.parent.mkdir(parents=True)
    path.write_text("from typing import TYPE_CHECKING\nfrom benchmark.eval import trust\nfrom methods import METHODS\n"
                    "from .cells import Cell\nif TYPE_CHECKING:\n    from benchmark.report import plots\n")
    report = tmp_path / "benchmark" / "report" / "extra.py"
    report.parent.mkdir(parents=True)
    report.write_text("from benchmark.harness.results import read_results\nfrom benchmark.core.names import REAL\n")
    assert breaches([path, report]) == []


def test_the_report_loads_neither_torch_nor_the_training_or_evaluation_stack():
    code = ("import sys, benchmark.report.build, benchmark.report.leaderboard, benchmark.report.plots; "
            "print(' '.join(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'methods' "
            "or m.startswith(('benchmark.engine', 'benchmark.eval', 'benchmark.data', 'benchmark.harness.cells'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []
