"""Budget points and guidance scales of a cell: config, folders, resume, one reference extraction."""

import json

import pytest

from benchmark.cli import main
from benchmark.core.config import SAMPLE, Config, apply_overrides, from_dict, stage_of, to_dict
from benchmark.core.errors import ConfigError
from benchmark.core.presets import get_preset
from benchmark.eval import evaluate
from benchmark.harness import stages
from benchmark.harness.cells import Cell, cell_config, check_or_write_config
from benchmark.harness.points import cell_points, checkpoint_steps, kept_steps, pending
from benchmark.harness.results import read_results

CELL = Cell("digits", "exp", 0.1, "ddpm", 0)


def test_guidance_takes_a_list_and_an_old_record_of_one_number():
    cfg = apply_overrides(Config(), ["sample.guidance=0,0.5,2", "eval.checkpoints=0.25,1"])
    assert cfg.sample.guidance == (0.0, 0.5, 2.0) and cfg.eval.checkpoints == (0.25, 1.0)
    assert from_dict(Config, {"sample": {"guidance": 1.5}}).sample.guidance == (1.5,)
    assert apply_overrides(Config(), ["sample.guidance=none"]).sample.guidance is None
    assert stage_of("sample.guidance") == SAMPLE
    assert stage_of("eval.checkpoints") is None and stage_of("eval.checkpoint_n_per_class") is None


@pytest.mark.parametrize("pair, message", [
    ("sample.guidance=-1", "out of range"),
    ("sample.guidance=()", "empty list"),
    ("sample.guidance=a,b", "expects float"),
    ("eval.checkpoints=0,1", "out of range"),
    ("eval.checkpoints=1.5", "out of range"),
    ("eval.checkpoints=()", "is empty"),
    ("eval.checkpoint_n_per_class=1", "out of range"),
])  # fmt: skip
def test_bad_lists_are_refused(pair, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [pair])


def test_a_fraction_must_be_a_whole_step():
    cfg = apply_overrides(get_preset("smoke"), ["eval.checkpoints=0.25,1", "train.steps=30"])  # 30 steps: 7.5
    with pytest.raises(ConfigError, match=r"step 7.5 of train.steps=30.*0.2 = step 6.*train.steps=60"):
        checkpoint_steps(cfg)
    assert checkpoint_steps(apply_overrides(cfg, ["train.steps=40"])) == (10, 40)
    assert checkpoint_steps(apply_overrides(get_preset("smoke"), ["eval.checkpoints=0.25,0.5,1"])) == (10, 20, 40)


def test_points_main_first_and_kept_steps():
    cfg = apply_overrides(get_preset("smoke"), ["train.steps=40", "eval.checkpoints=0.5", "sample.guidance=1,0,1"])
    points = cell_points(cfg)
    assert [p.name for p in points] == ["step40_g1", "step40_g0", "step20_g1", "step20_g0"]
    assert points[0].main and not any(p.main for p in points[1:])
    assert kept_steps(cfg) == (10, 20, 30)  # the point's step and the quarters
    assert cell_config(cfg, CELL).train.keep_ema_at == (10, 20, 30)


def test_a_longer_guidance_list_is_no_changed_setting(tmp_path):
    """The first scale is the main point's: a record of today's (one number) with the same first scale
    compares equal; budget points and other scales never redo the main point."""
    cfg = get_preset("smoke")
    folder = tmp_path / "cell"
    check_or_write_config(folder, cell_config(cfg, CELL), CELL)
    record = json.loads((folder / "config.json").read_text())
    record["config"]["sample"]["guidance"] = 1.0  # as written before guidance took a list
    (folder / "config.json").write_text(json.dumps(record))
    (folder / "model.pt").write_bytes(b"")  # the folder holds work
    more = apply_overrides(cfg, ["sample.guidance=1,2", "eval.checkpoints=0.5,1"])
    assert check_or_write_config(folder, cell_config(more, CELL), CELL) is None
    change = check_or_write_config(folder, cell_config(apply_overrides(cfg, ["sample.guidance=2,1"]), CELL), CELL)
    assert change.redo == SAMPLE


def _spy_reference(monkeypatch, sizes):
    """Record the size of every image set a feature space really extracts (cache misses only)."""
    real = evaluate.extract_cached

    def spy(space, images, **kw):
        orig = space.extract

        def counted(imgs, **k):
            sizes.append(len(imgs))
            return orig(imgs, **k)

        space.extract = counted
        try:
            return real(space, images, **kw)
        finally:
            del space.extract

    monkeypatch.setattr(evaluate, "extract_cached", spy)


def test_points_resume_add_only_their_work_and_extract_the_reference_once(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    base = ["run", "--preset", "smoke", "--methods", "ddpm", "--out", str(out), "--no-progress", "--no-report",
            "--set", "train.steps=40", "--set", "sample.n_per_class=4", "--set", "eval.real_floor=false",
            "--set", "eval.downstream=false", "--set", "train.keep_ema_fractions=0.25"]  # fmt: skip
    sizes: list[int] = []
    _spy_reference(monkeypatch, sizes)
    assert main([*base, "--set", "eval.checkpoints=0.5,1", "--set", "sample.guidance=0,1"]) == 0
    table = read_results(out)
    fid = table[(table.metric == "fid") & (table.group == "all")]
    assert sorted(zip(fid.train_steps, fid.guidance, fid.point)) == [
        (20, 0.0, "extra"), (20, 1.0, "extra"), (40, 0.0, "main"), (40, 1.0, "extra")]
    assert set(table[table.metric.str.startswith("fid_half")].metric) == {"fid_half_a", "fid_half_b"}
    n_ref = int(fid.n_ref.iloc[0])
    assert sizes.count(n_ref) == 1, sizes  # the reference: once for four points
    assert sizes.count(40) == 4  # each point's 4 x 10 generated images
    folder = CELL.folder(out)
    assert sorted(p.name for p in (folder / "points").iterdir()) == ["step20_g0", "step20_g1", "step40_g1"]
    stamp = {p: (p / "metrics.csv").stat().st_mtime_ns for p in [folder, *(folder / "points").iterdir()]}
    rows = len(table)

    calls = []
    monkeypatch.setattr(stages, "generate_eval_set", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(
        AssertionError("a finished point sampled again")))
    assert main([*base, "--set", "eval.checkpoints=0.5,1", "--set", "sample.guidance=0,1"]) == 0
    assert calls == [] and len(read_results(out)) == rows
    monkeypatch.undo()

    sizes.clear()
    _spy_reference(monkeypatch, sizes)
    assert main([*base, "--set", "eval.checkpoints=0.25,0.5,1", "--set", "sample.guidance=0,1"]) == 0
    assert sizes == [40, 40]  # the two new points' images; the reference and training images come from the cache
    assert {p: (p / "metrics.csv").stat().st_mtime_ns for p in stamp} == stamp  # finished points untouched
    table = read_results(out)
    assert sorted(set(table.train_steps)) == [10, 20, 40]
    cfg = apply_overrides(get_preset("smoke"), ["train.steps=40", "eval.checkpoints=0.25,0.5,1", "sample.guidance=0,1"])
    assert pending(cell_config(cfg, CELL), folder) == []

    capsys.readouterr()
    assert main([*base, "--set", "eval.checkpoints=0.75,1"]) == 2  # step 30 was not kept
    err = capsys.readouterr().err
    assert "step 30" in err and "--force --methods ddpm" in err and len(err.strip().splitlines()) == 1

    # a new first scale resamples the main point alone; the other points keep their files
    before = {p.name: (p / "metrics.csv").stat().st_mtime_ns for p in (folder / "points").iterdir()}
    assert main([*base, "--set", "eval.checkpoints=0.25,0.5,1", "--set", "sample.guidance=1,0"]) == 0
    after = {p.name: (p / "metrics.csv").stat().st_mtime_ns for p in (folder / "points").iterdir()}
    assert set(after) - set(before) == {"step40_g0"}
    assert all(after[name] == before[name] for name in ("step10_g0", "step10_g1", "step20_g0", "step20_g1"))
    fid = read_results(out).query("metric == 'fid' and group == 'all'")
    assert set(fid.loc[fid.point == "main", "guidance"]) == {1.0} and len(fid) == 6


def test_a_fraction_off_the_steps_exits_2_naming_the_fix(tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--out", str(tmp_path), "--set", "eval.checkpoints=0.25,1",
                 "--set", "train.steps=30"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a whole step" in err and "train.steps=60" in err and not (tmp_path / "runs").exists()


def test_config_record_round_trips_a_list():
    cfg = apply_overrides(Config(), ["sample.guidance=0,2"])
    assert from_dict(Config, to_dict(cfg)).sample.guidance == (0.0, 2.0)


def test_outside_samples_record_a_step_and_scale(tmp_path, capsys):
    from digits_samples import digits_samples

    samples = digits_samples(tmp_path / "samples.npz", per_class=6)
    argv = ["evaluate", "--preset", "smoke", "--name", "mine", "--no-progress", "--samples", str(samples),
            "--set", "eval.downstream=false", "--set", "eval.real_floor=false", "--out", str(tmp_path / "out")]
    assert main([*argv, "--guidance", "-1"]) == 2
    assert "--guidance -1.0 must be a scale of at least 0" in capsys.readouterr().err
    assert main([*argv, "--train-steps", "20000", "--guidance", "1.5"]) == 0
    table = read_results(tmp_path / "out")
    mine = table[table.method == "mine"]
    assert set(mine.train_steps) == {20000} and set(mine.guidance) == {1.5} and set(mine.point) == {"main"}
