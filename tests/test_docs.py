"""The documentation: a short README, a site that builds without warnings, recipes that run."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/ (at most 250)"


def test_readme_links_point_at_existing_files():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to its documentation pages"
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


NO_MKDOCS = importlib.util.find_spec("mkdocs") is None


@pytest.mark.skipif(NO_MKDOCS, reason="the docs extra is not installed: pip install -e '.[docs]'")
def test_site_builds_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_readme_method_recipe_registers_and_weights_average_one():
    """The README's "your method" recipe, run as written (in a fresh process: it registers a method)."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# my_method.py.*?)```", readme, re.S).group(1)
    check = code + (
        "\nimport numpy as np\nfrom methods import get_method\n"
        "counts = np.array([100, 10, 1])\n"
        "m = get_method('power-reweight', class_counts=counts, options=None)\n"
        "w = m.sample_weights(torch.tensor([0, 1, 2])).double().numpy()\n"
        "assert abs((w * counts).sum() / counts.sum() - 1) < 1e-6 and w[2] > w[1] > w[0], w\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _shown_commands():
    """Every `python run_benchmark.py ...` / `ltgen-bench ...` line of a bash block in the README and docs/."""
    import shlex

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                for part in re.split(r"&&|;|\|", line):
                    words = shlex.split(part.strip())
                    for i, word in enumerate(words):
                        if word == "ltgen-bench" or word.endswith("run_benchmark.py"):
                            yield page.name, words[i + 1 :]
                            break


def test_every_command_shown_in_the_docs_parses():
    """The commands of the README and the docs use flags the parser has (the runnable ones run in the tests
    named beside them; the others need a dataset, a GPU or a cluster and say so)."""
    from benchmark.cli import build_parser
    from benchmark.core.config import Config, apply_overrides

    shown = list(_shown_commands())
    assert len(shown) > 20
    parser = build_parser()
    for page, argv in shown:
        if not argv or argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
            argv = ["run", *argv]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page}: `{' '.join(argv)}` does not parse (exit {exc.code})")
        plugins = [p for p in getattr(args, "plugins", []) if (ROOT / p).exists()]  # the shipped example
        if plugins:
            from methods.plugins import load_plugins

            load_plugins([str(ROOT / p) for p in plugins], env=False, entry_points=False)
        for pair in getattr(args, "overrides", []):  # every --set names a real key with a valid value
            if pair.startswith("method.") and getattr(args, "plugins", []) and not plugins:
                continue  # an option of a plugin file the page writes itself (my_method.py)
            apply_overrides(Config(), [pair])
