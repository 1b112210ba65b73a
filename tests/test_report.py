import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.harness.results import RESULT_COLUMNS, append_cell, read_results
from benchmark.report.build import make_report
from benchmark.report.leaderboard import leaderboards


def cell_rows(method, seed, fid, recall, *, dataset="digits", imbalance=0.1, protocol="p", counts=(100, 30, 10),
              precision="bf16"):
    rows = []
    precision = "none" if method == "real" else precision
    base = dict(dataset=dataset, profile="exp", imbalance=imbalance, split_fingerprint="abc", method=method,
                seed=seed, train_steps=10, protocol=protocol, sampler="ddim", sampler_steps=10, guidance=1.0,
                train_precision=precision, sample_precision=precision, point="main",
                reference="test", feature_space="classifier", n_gen=10, n_ref=20, note="")  # fmt: skip
    for group, scale in [("all", 1.0), ("many", 0.8), ("medium", 1.0), ("few", 1.5)]:
        rows.append({**base, "metric": "fid", "group": group, "class": np.nan, "value": fid * scale})
        rows.append({**base, "metric": "recall", "group": group, "class": np.nan, "value": recall / scale})
    for k, n in enumerate(counts):
        rows.append({**base, "metric": "fid", "group": "class", "class": k, "value": fid * (1 + k)})
        rows.append({**base, "metric": "recall", "group": "class", "class": k, "value": recall / (1 + k)})
        rows.append({**base, "metric": "train_count", "group": "class", "class": k, "value": float(n)})
    return pd.DataFrame(rows)[RESULT_COLUMNS]


@pytest.fixture
def table_dir(tmp_path):
    path = tmp_path / "results.csv"
    for seed in (0, 1, 2):
        append_cell(path, cell_rows("ddpm", seed, 10.0 + seed, 0.5))
        append_cell(path, cell_rows("cbdm", seed, 5.0 + seed, 0.5 + 0.001 * seed))
        append_cell(path, cell_rows("real", seed, 1.0, 0.9))
    return tmp_path


def test_append_is_once_per_cell(tmp_path):
    path = tmp_path / "results.csv"
    assert append_cell(path, cell_rows("ddpm", 0, 10.0, 0.5))
    assert not append_cell(path, cell_rows("ddpm", 0, 99.0, 0.5))
    table = read_results(path)
    assert len(table) == len(cell_rows("ddpm", 0, 10.0, 0.5))
    assert table[table.metric == "fid"]["value"].max() < 99
    assert append_cell(path, cell_rows("ddpm", 0, 99.0, 0.5), replace=True)
    assert len(read_results(path)) == len(table)


def test_leaderboard_marks_best_and_ties(table_dir):
    table = read_results(table_dir)
    [(key, display, marks)] = leaderboards(table)
    assert list(display.index) == ["cbdm", "ddpm", "real data (floor)"]
    assert display.loc["cbdm", "FID"] == "6.00 ± 1.00"
    assert display.loc["ddpm", "seeds"] == "3"
    assert marks.loc["cbdm", "FID"] == "best"  # 5 better on every seed: the paired test separates it
    assert marks.loc["cbdm", "Rec"] == "tie"  # ahead by 0, 0.001, 0.002: paired t p = 0.23 over 3 seeds
    [rec] = display.attrs["paired"]["Rec"]
    assert rec.test.n_seeds == 3 and rec.test.p == pytest.approx(0.225, abs=0.005)
    assert marks.loc["real data (floor)"].eq("").all()  # the floor never competes


def test_rows_of_different_precisions_never_share_a_cell_and_the_title_says_so(tmp_path):
    table = pd.concat([cell_rows("ddpm", 0, 10.0, 0.5, precision="fp32"), cell_rows("ddpm", 1, 12.0, 0.5),
                       cell_rows("cbdm", 0, 5.0, 0.5), cell_rows("real", 0, 1.0, 0.9)])
    [(key, display, _)] = leaderboards(table)
    assert list(display.index) == ["cbdm [bf16/bf16]", "ddpm [bf16/bf16]", "ddpm [fp32/fp32]", "real data (floor)"]
    assert display.loc["ddpm [fp32/fp32]", "FID"] == "10.00" and display.loc["ddpm [bf16/bf16]", "FID"] == "12.00"
    assert display.loc["ddpm [fp32/fp32]", "precision"] == "fp32/fp32"
    table.to_csv(tmp_path / "results.csv", index=False)
    make_report(tmp_path, plots=False)
    assert "precision (train/sample) DIFFERS between rows: bf16/bf16, fp32/fp32" in (tmp_path / "leaderboard.md").read_text()
    same = pd.concat([cell_rows("ddpm", 0, 10.0, 0.5), cell_rows("cbdm", 0, 5.0, 0.5), cell_rows("real", 0, 1.0, 0.9)])
    [(_, display, _)] = leaderboards(same)
    assert list(display.index) == ["cbdm", "ddpm", "real data (floor)"]
    same.to_csv(tmp_path / "results.csv", index=False)
    make_report(tmp_path, plots=False)
    assert "| precision (train/sample) bf16/bf16" in (tmp_path / "leaderboard.md").read_text()


def test_a_table_from_before_precision_was_recorded_reads_and_grows(tmp_path):
    path = tmp_path / "results.csv"
    old = cell_rows("ddpm", 0, 10.0, 0.5).drop(columns=["train_precision", "sample_precision"])
    old.to_csv(path, index=False)
    assert set(read_results(path)["train_precision"]) == {"unrecorded"}
    assert append_cell(path, cell_rows("cbdm", 0, 5.0, 0.5))  # the header is rewritten with the new columns
    table = read_results(path)
    assert list(pd.read_csv(path, nrows=0).columns) == RESULT_COLUMNS
    assert set(table.loc[table.method == "cbdm", "sample_precision"]) == {"bf16"}
    assert set(table.loc[table.method == "ddpm", "sample_precision"]) == {"unrecorded"}


def _paper_rows(method, protocol, dataset="cifar100", space="inception-v3-compat:abc:bilinear", k=5):
    rows = cell_rows(method, 0, 9.0, 0.5, dataset=dataset, imbalance=0.01, protocol=protocol)
    rows["feature_space"] = space
    rows.loc[rows["metric"] == "recall", "note"] = f"k={k}"
    return rows


def test_published_rows_only_with_their_own_settings():
    # The CORAL paper's Table 1 (CIFAR-100-LT IR100): DDPM / CBDM / CORAL with the CBDM sampler (DDPM-1000),
    # 150k steps x 128, 50k samples, FID / IS on Inception; T2H trained 200k steps and sampled with DDIM-100;
    # recall on VGG16 fc2 with k = 3, which is not the CBDM evaluator's recall (Inception, k = 5).
    table = pd.concat([_paper_rows("ddpm", "ddpm1000"), _paper_rows("coral", "ddpm1000")])
    [(_, display, _)] = leaderboards(table)
    assert list(display.index) == ["coral", "CORAL (published)", "ddpm", "DDPM (published)", "CBDM (published)"]
    assert display.loc["DDPM (published)", "FID"] == "7.70" and display.loc["DDPM (published)", "IS"] == "13.20"
    assert display.loc["CORAL (published)", "FID"] == "5.37"
    assert display.loc["DDPM (published)", "Rec"] == "-"  # VGG16 k=3 is not this column's recall
    settings = display.loc["DDPM (published)", "settings"]
    for part in ("CORAL paper", "DDPM-1000", "guidance 0.8", "150k steps x batch 128", "50k images",
                 "VGG16 fc2 k=3", "recall 0.50"):
        assert part in settings
    assert display.loc["ddpm", "settings"] == "DDIM-10; guidance 1; 10 steps; 10 images; P/R k=5"
    # T2H's published row is a DDIM-100 one: it appears under protocol ddim100 only
    [(_, display, _)] = leaderboards(_paper_rows("t2h", "ddim100"))
    assert list(display.index) == ["t2h", "T2H (published)"]
    assert display.loc["T2H (published)", "FID"] == "6.78"
    assert "DDIM-100; guidance 1.5; 200k steps x batch 128" in display.loc["T2H (published)", "settings"]
    # the Capacity Manipulation paper (DDIM-50, guidance 1.5), CIFAR-10-LT IR100: CM 7.73 next to OC 8.39,
    # CBDM 8.23, DDPM 10.70; the baselines' training budgets are not stated
    [(_, display, _)] = leaderboards(_paper_rows("ddpm", "ddim", dataset="cifar10"))
    assert display.loc["CM (published)", "FID"] == "7.73" and display.loc["OC (published)", "FID"] == "8.39"
    assert display.loc["CBDM (published)", "FID"] == "8.23" and display.loc["DDPM (published)", "FID"] == "10.70"
    assert "training budget not stated" in display.loc["DDPM (published)", "settings"]
    [(_, display, _)] = leaderboards(_paper_rows("ddpm", "ddim"))
    assert display.loc["CM (published)", "FID"] == "7.52" and display.loc["CM (published)", "FID few"] == "18.73"
    # another protocol, or features that are not Inception: no published rows at all
    for rows in (_paper_rows("ddpm", "cpu"), _paper_rows("ddpm", "ddim", space="classifier:x")):
        [(_, display, _)] = leaderboards(rows)
        assert not any("published" in i for i in display.index)


def test_report_regenerates_identical_tables(table_dir):
    paths = make_report(table_dir, plots=True)
    first = {p.name: p.read_bytes() for p in paths if p.suffix in (".md", ".tex", ".csv")}
    assert (table_dir / "plots").is_dir()
    pngs = list((table_dir / "plots").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    make_report(table_dir, plots=False)
    second = {name: (table_dir / name).read_bytes() for name in first}
    assert first == second


def test_report_on_missing_table_is_clear(tmp_path):
    with pytest.raises(BenchmarkError, match="no results table"):
        make_report(tmp_path)


def test_group_bars_draw_spread_only_over_several_seeds(tmp_path, monkeypatch):
    """Error bars are +-1 std over seeds: three seeds draw them, a single seed draws none (not zero-length bars)."""
    from benchmark.report import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figs.append(fig) or [])
    three = pd.concat([cell_rows("ddpm", s, 10.0 + s, 0.5) for s in (0, 1, 2)])
    one = cell_rows("cbdm", 0, 5.0, 0.5)
    key = {"dataset": "digits", "profile": "exp", "imbalance": 0.1, "protocol": "p", "feature_space": "classifier"}
    plots.group_bars(pd.concat([three, one]), key, tmp_path)
    ax = figs[0].axes[0]  # fid
    bars = {c.get_label(): c for c in ax.containers}
    assert bars["ddpm"].errorbar is not None
    seg = bars["ddpm"].errorbar.lines[2][0].get_segments()
    spread = np.std([10.0, 11.0, 12.0], ddof=1) * np.array([0.8, 1.0, 1.5])  # many / medium / few
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in seg], 2 * spread)
    assert bars["cbdm"].errorbar is None


def diversity_rows(method, seed, *, ratio, mem, counts=(100, 30, 10), names=("T-shirt/top", "Trouser", "Bag")):
    """A cell's per-class in-manifold Vendi ratio, coverage, memorisation rows and named train counts."""
    base = dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method, seed=seed,
                train_steps=10, protocol="p", sampler="ddim", sampler_steps=10, guidance=1.0, reference="test",
                train_precision="none" if method == "real" else "bf16",
                sample_precision="none" if method == "real" else "bf16",
                feature_space="classifier", n_gen=10, n_ref=20, point="main")  # fmt: skip
    rows = []
    for k, (n, name) in enumerate(zip(counts, names)):
        group = ("many", "medium", "few")[k]
        rows.append({**base, "metric": "train_count", "group": "class", "class": k, "value": float(n),
                     "note": f"group={group};name={name}"})
        for metric, value, space in (("vendi_inlier_ratio", ratio[k], "classifier"), ("coverage", 0.5, "classifier"),
                                     ("memorization", mem[k], "classifier"), ("memorization_pixel", mem[k], "pixel")):
            rows.append({**base, "feature_space": space, "metric": metric, "group": "class", "class": k,
                         "value": value + 0.01 * seed, "note": ""})
        for metric, value in (("vendi_inlier_ratio", ratio[k]), ("coverage", 0.5), ("memorization", mem[k])):
            if group == "few":
                rows.append({**base, "metric": metric, "group": "few", "class": np.nan, "value": value, "note": ""})
    return pd.DataFrame(rows)[RESULT_COLUMNS]


def test_diversity_plot_per_class_csv_and_leaderboard_columns(tmp_path, monkeypatch):
    from benchmark.report import plots

    table = pd.concat([diversity_rows("ddpm", s, ratio=(0.9, 0.6, 1.4), mem=(0.0, 0.1, 0.5)) for s in (0, 1, 2)]
                      + [diversity_rows("cbdm", 0, ratio=(0.95, 0.9, 0.8), mem=(0.0, 0.0, 0.1)),
                         diversity_rows("real", 0, ratio=(1.0, 1.0, 1.0), mem=(0.0, 0.0, 0.02))])
    [(_, display, marks)] = leaderboards(table)
    assert display.loc["cbdm", "Vendi-in/real few"] == "0.800"
    # cbdm has the best mean (0.8 is closer to 1 than ddpm's 1.4) but shares only seed 0 with ddpm: not separable
    assert marks.loc["cbdm", "Vendi-in/real few"] == "tie"
    [vendi] = display.attrs["paired"]["Vendi-in/real few"]
    assert (vendi.best, vendi.other, vendi.test.n_seeds) == ("cbdm", "ddpm", 1) and np.isnan(vendi.test.p)
    assert vendi.test.mean_diff == pytest.approx(0.2) and "2 seeds not shared" in vendi.test.note
    assert marks.loc["cbdm", "Mem few"] == "tie" and display.loc["real data (floor)", "Mem few"] == "0.020"
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figs.append((stem.name, fig)) or [stem])
    plots.write_plots(table, tmp_path)
    names = dict(figs)
    [stem] = [n for n in names if n.startswith("diversity_")]
    axes = names[stem].axes
    assert [a.get_ylabel() for a in axes] == [plots.YLABEL[m] for m in ("vendi_inlier_ratio", "coverage", "memorization")]
    lines = {ln.get_label(): ln for ln in axes[0].lines}
    assert set(lines) >= {"ddpm", "cbdm", "real data (floor)"}
    np.testing.assert_allclose(lines["ddpm"].get_ydata(), [1.41, 0.61, 0.91])  # tail first: sorted by class size
    assert len(axes[0].collections) == 1  # a seed band for ddpm (3 seeds) only
    assert "ddpm (pixels)" in {ln.get_label() for ln in axes[2].lines}
    assert any("Bag" in t.get_text() for t in axes[0].get_xticklabels())  # classes are named
    csv = tmp_path / "leaderboard_per_class.csv"
    from benchmark.report.leaderboard import write_leaderboards

    write_leaderboards(table, tmp_path)
    per_class = pd.read_csv(csv)
    ddpm = per_class[per_class.method == "ddpm"].set_index("class")
    assert ddpm.loc[2, "class_name"] == "Bag" and ddpm.loc[2, "train_count"] == 10 and ddpm.loc[2, "seeds"] == 3
    assert ddpm.loc[2, "memorization_pixel"] == pytest.approx(0.51) and ddpm.loc[2, "vendi_inlier_ratio_std"] > 0
    assert len(per_class) == 9 and set(per_class.method) == {"ddpm", "cbdm", "real data (floor)"}


def test_neighbour_sheet_and_named_sample_grid(tmp_path, monkeypatch):
    from benchmark.harness.cells import Cell
    from benchmark.report import plots

    table = diversity_rows("ddpm", 0, ratio=(1, 1, 1), mem=(0, 0, 0))
    folder = Cell("digits", "exp", 0.1, "ddpm", 0).folder(tmp_path)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "samples.npz", images=rng.integers(0, 255, (24, 1, 8, 8)).astype(np.uint8),
             labels=np.repeat(np.arange(3), 8))
    found = np.ones((1, 6), bool)
    found[0, 4:] = False  # a class with only 4 generated images pads the rest
    np.savez(folder / "neighbours.npz", classes=np.array([2]), gen=rng.integers(0, 255, (1, 6, 1, 8, 8)).astype(np.uint8),
             train=rng.integers(0, 255, (1, 6, 3, 1, 8, 8)).astype(np.uint8), ratio=np.linspace(0, 1, 6)[None],
             found=found)  # fmt: skip
    paths = plots.neighbour_sheets(table, tmp_path, tmp_path / "plots")
    assert [p.name for p in paths] == ["neighbours_digits_exp-0.1_ddpm_seed0.png", "neighbours_digits_exp-0.1_ddpm_seed0.pdf"]
    assert paths[0].stat().st_size > 1000
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figs.append(fig) or [stem])
    plots.sample_grids(table, tmp_path, tmp_path / "plots")
    labels = [t.get_text() for t in figs[0].axes[0].get_yticklabels()]
    assert labels == ["0 T-shirt/top (n=100)", "1 Trouser (n=30)", "2 Bag (n=10)"]


def test_floor_n_columns_and_sample_sizes_under_each_table(tmp_path):
    path = tmp_path / "results.csv"
    for method, fid, at_floor in (("ddpm", 10.0, 14.0), ("cbdm", 8.0, 11.0), ("real", 2.0, 2.0)):
        rows = cell_rows(method, 0, fid, 0.5)
        extra = rows[(rows.metric == "fid") & (rows.group == "all")].copy()
        extra["metric"], extra["value"] = "fid_at_floor_n", at_floor
        extra["n_gen"], extra["n_ref"] = 6, 14
        if method == "real":
            rows.loc[rows.metric == "fid", ["n_gen", "n_ref"]] = (6, 14)
            rows.loc[rows.metric == "fid", "note"] = "real_floor n_per_class=10;capped_classes=1"
        append_cell(path, pd.concat([rows, extra], ignore_index=True))
    make_report(tmp_path, plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    at = cols.index("FID @floor n")
    cells = {line.split("|")[1].strip(): line.split("|")[at + 1].strip() for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| method")}
    assert cells["ddpm"] == "14.00" and cells["cbdm"] == "**11.00**" and cells["real data (floor)"] == "2.00"
    assert ("Sample sizes, generated vs reference images, overall: methods' own columns 10 vs 20; '@floor n' "
            "columns 6 vs 14; real data (floor) 6 vs 14 (capped_classes=1, real_floor n_per_class=10).") in md
    assert "compare with the floor there" in md
    assert "compare methods with the floor there" in (tmp_path / "leaderboard_full.md").read_text()
