"""report.html: static, relative paths, every leaderboard and plot with a caption; opens in a browser."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_report import cell_rows

from benchmark.harness.results import append_cell
from benchmark.report.build import make_report
from benchmark.report.html import markdown_to_html


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self.captions, self.scripts = [], [], 0, 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "table":
            self.tables += 1
        elif tag == "figcaption":
            self.captions += 1
        elif tag == "script":
            self.scripts += 1


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    for seed in (0, 1):
        for method, fid in (("ddpm", 10.0), ("cbdm", 8.0), ("real", 1.0)):
            append_cell(out / "results.csv", cell_rows(method, seed, fid + seed, 0.5))
            append_cell(out / "results.csv", cell_rows(method, seed, fid + seed, 0.5, imbalance=0.01))
    make_report(out, say=lambda _: None)
    return out


def test_every_reference_exists_and_every_plot_and_table_is_shown(report_dir):
    page = (report_dir / "report.html").read_text()
    parsed = Links()
    parsed.feed(page)
    pngs = sorted(p.relative_to(report_dir).as_posix() for p in (report_dir / "plots").glob("*.png"))
    assert pngs and sorted(parsed.images) == pngs  # every plot, once
    for ref in parsed.images + parsed.links:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref  # relative: the folder travels whole
        assert (report_dir / ref).is_file(), ref
    # two leaderboards; the claim test of their ddpm and cbdm rows is one line each (no tail rows to test)
    assert parsed.tables == 2 and "Claim test" in page
    assert parsed.captions == len(pngs) and parsed.scripts == 0
    assert "leaderboard_full.md" in parsed.links and "results.csv" in parsed.links
    assert "imbalance 0.01" in page and "imbalance 0.1" in page


def test_markdown_subset():
    html = markdown_to_html("# T\n\n- a **b**\n- c\n\n> warn *x~*\n\n| m | v |\n|---|---|\n| ddpm | **1.0** |\n\ntext")
    assert html.splitlines() == ["<h2>T</h2>", "<ul><li>a <b>b</b></li><li>c</li></ul>",
                                 "<blockquote>warn <i>x~</i></blockquote>",
                                 "<table><thead><tr><th>m</th><th>v</th></tr></thead><tbody><tr><td>ddpm</td><td><b>1.0</b></td>"
                                 "</tr></tbody></table>", "<p>text</p>"]  # fmt: skip


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# after loading, the page's title becomes the number of images that decoded (naturalWidth > 0)
PROBE = ("<script>window.addEventListener('load', () => { const i = [...document.images]; "
         "document.title = 'decoded ' + i.filter(x => x.complete && x.naturalWidth > 0).length + ' of ' + i.length; "
         "});</script>")  # fmt: skip


@pytest.mark.skipif(BROWSER is None, reason="no headless browser installed (Debian: apt-get install chromium)")
def test_the_page_renders_with_its_images_in_headless_chromium(report_dir):
    probe = report_dir / "report_probe.html"  # the report itself stays script-free; a copy carries the probe
    probe.write_text((report_dir / "report.html").read_text().replace("</body>", PROBE + "</body>").replace(
        'loading="lazy"', ""))
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    n = len(list((report_dir / "plots").glob("*.png")))
    assert f"<title>decoded {n} of {n}</title>" in proc.stdout, (proc.stdout[:500], proc.stderr[-2000:])
    assert "<table>" in proc.stdout
