"""A method from outside the package: plugin files, entry points, their options, their record in a cell's
config, the contract check, and every bad input named before anything runs (exit 2)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import benchmark.core.config as config_module
from benchmark.cli import main
from benchmark.core.config import Config, to_dict
from benchmark.core.errors import ConfigError
from benchmark.core.presets import get_preset
from benchmark.core.registry import Registry
from benchmark.harness.cells import Cell, cell_config, check_or_write_config, resolve_precisions
from methods import METHODS, Method, plugins, resolve
from methods.contracts import check_method

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_method.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "layout1"


@pytest.fixture
def isolated(monkeypatch):
    """Registries as they were before the test: a plugin registered here is gone afterwards."""
    saved = (dict(METHODS._items), dict(config_module._METHOD_OPTIONS), dict(config_module._OPTION_PREFIX),
             dict(plugins._LOADED), dict(plugins._SOURCES))  # fmt: skip
    monkeypatch.setenv(plugins.ENV, "")  # restored (to unset) afterwards, though load_plugins writes it
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", True)  # no installed entry point interferes
    yield
    for live, old in zip((METHODS._items, config_module._METHOD_OPTIONS, config_module._OPTION_PREFIX,
                          plugins._LOADED, plugins._SOURCES), saved):  # fmt: skip
        live.clear()
        live.update(old)


def _outside(tmp_path, text: str | None = None, name: str = "my_method.py") -> Path:
    """A plugin file outside the repository (the example, or ``text``)."""
    path = tmp_path / "outside" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text if text is not None else EXAMPLE.read_text())
    return path


def _dry(tmp_path, *extra):
    return main(["run", "--preset", "smoke", "--out", str(tmp_path / "out"), "--dry-run", *extra])


def test_a_plugin_method_composes_takes_its_options_and_records_its_content(tmp_path, isolated, capsys):
    path = _outside(tmp_path)
    assert _dry(tmp_path, "--plugin", str(path), "--methods", "ddpm,cbdm,tempered+resample",
                "--set", "method.tempered.power=0.8") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert '"power": 0.8' in out and "tempered_resample/seed0" in out
    spec = resolve("tempered+resample")
    assert spec.parts == ("tempered", "resample") and spec.sections == ("tempered", "resample")
    cfg = config_module.apply_overrides(get_preset("smoke"), ["method.tempered.power=0.8"])
    method = spec.build(class_counts=[10, 5, 1], options=cfg.method)
    assert method.name == "tempered+resample" and method.class_probs(0, 10) is not None
    w = method.sample_weights(__import__("torch").tensor([0, 2]))
    assert float(w[1] / w[0]) == pytest.approx(10**0.8, rel=1e-5)
    cell = Cell("digits", "exp", 0.1, "tempered+resample", 0)
    ccfg = cell_config(cfg, cell)
    digest = plugins.file_digest(path)
    assert ccfg.method_code == f"my_method.py sha256:{digest}"
    assert cell_config(cfg, Cell("digits", "exp", 0.1, "cbdm", 0)).method_code == ""  # ours: nothing to record
    folder = tmp_path / "cell"
    check_or_write_config(folder, ccfg, cell)
    (folder / "model.pt").write_bytes(b"")  # the folder holds work
    assert check_or_write_config(folder, ccfg, cell) is None
    edited = replace(ccfg, method_code="my_method.py sha256:" + "0" * 64)  # the plugin file was edited
    with pytest.raises(ConfigError, match="different config \\(method_code.*--force"):
        check_or_write_config(folder, edited, cell)
    other = config_module.apply_overrides(ccfg, ["method.tempered.power=0.3"])
    with pytest.raises(ConfigError, match="method.tempered.power"):
        check_or_write_config(folder, other, cell)


def test_the_plugin_env_variable_and_a_repeated_file_load_once(tmp_path, isolated, monkeypatch):
    path = _outside(tmp_path)
    monkeypatch.setenv(plugins.ENV, os.pathsep.join([str(path), str(path)]))
    assert plugins.load_plugins([str(path)]) == ["tempered"]
    assert plugins.load_plugins() == []  # already loaded in this process
    assert os.environ[plugins.ENV].split(os.pathsep) == [str(path), str(path.resolve())] or \
        str(path.resolve()) in os.environ[plugins.ENV]  # fmt: skip


def test_a_config_with_a_plugin_section_is_rebuilt_in_a_process_that_never_loaded_it(tmp_path, isolated):
    # what a --jobs worker (spawn) and a submitit job receive: the method section names the plugin files to load
    path = _outside(tmp_path)
    plugins.load_plugins([str(path)])
    cfg = config_module.apply_overrides(Config(), ["method.tempered.power=1.5"])
    blob = tmp_path / "cfg.pkl"
    blob.write_bytes(pickle.dumps(cfg))
    code = ("import pickle, sys; cfg = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(cfg.method.tempered.power, type(cfg.method.tempered).__name__)")
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV}
    res = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=300,
                         env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1.5", "TemperedOptions"]


BAD_PLUGINS = {
    "missing": (None, "no such file"),
    "syntax": ("def broken(:\n", "does not import: SyntaxError"),
    "raises": ("raise RuntimeError('needs a GPU driver')\n", "does not import: RuntimeError: needs a GPU driver"),
    "nothing": ("X = 1\n", "registers no method"),
    "taken": ("from methods import METHODS, Method\n@METHODS.register('ddpm')\nclass Mine(Method):\n    pass\n",
              "'ddpm' is already registered"),
    "not-a-method": ("from methods import METHODS\n@METHODS.register('mine')\nclass Mine:\n    pass\n",
                     "must be a subclass of methods.base.Method"),
    "bad-options": ("from dataclasses import dataclass\nfrom methods import METHODS, Method\n@dataclass\nclass O:\n"
                    "    x: float = 1.0\n@METHODS.register('mine')\nclass Mine(Method):\n    Options = O\n",
                    "must be a @dataclass(frozen=True) subclass of benchmark.core.config.Options"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_a_bad_plugin_is_one_line_naming_the_file_and_exit_2(tmp_path, isolated, capsys, case):
    text, expect = BAD_PLUGINS[case]
    path = tmp_path / "outside" / "plug.py" if text is None else _outside(tmp_path, text, "plug.py")
    assert _dry(tmp_path, "--plugin", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expect in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pair, expect", [
    ("method.cbdm.taux=1", "method 'cbdm' has no option 'taux'. Did you mean method.cbdm.tau"),
    ("method.cbdm.gate=full", "method.t2h.gate, method.cm.gate belong to another method"),
    ("method.mine.power=1", "method 'mine' has no options (or is not registered; a plugin method needs --plugin FILE)"),
    ("method.cbdm_tau=0.5", "'method.cbdm_tau' is now method.cbdm.tau and method.cbdm_ft.tau"),
    ("method.cbdm.tau=-1", "method.cbdm.tau=-1.0 is out of range: must be in [0, inf)"),
    ("method.resample.schedule=slow", "method.resample.schedule='slow' is not a valid value"),
])  # fmt: skip
def test_a_bad_method_option_is_exit_2_before_anything_runs(tmp_path, capsys, pair, expect):
    assert _dry(tmp_path, "--set", pair) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1, err


def test_list_shows_every_method_option_with_its_range(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "method.cbdm.tau" in out and "[0, inf)" in out and "method.cbdm_ft.start" in out and "(0, 1]" in out
    assert "method.resample.schedule" in out and "fixed | progressive | progressive-exponent" in out


def test_config_py_knows_no_method_option():
    text = (ROOT / "benchmark" / "core" / "config.py").read_text()
    fields = {f.name for f in config_module.fields(config_module.Config().method)}
    assert {"cbdm", "cbdm_ft", "coral", "t2h", "cm", "reweight", "resample"} <= fields  # they are all still there
    for word in ("cbdm_tau", "coral_weight", "t2h_gate", "cm_rank_ratio", "resample_q", "reweight_beta"):
        assert word not in text


@pytest.mark.parametrize("method", ["ddpm", "cbdm"])
def test_a_results_folder_of_the_first_layout_resumes_without_retraining(tmp_path, method):
    # config.json as the main branch before per-method options wrote it (flat method.cbdm_tau; made with
    # `run --preset smoke --methods ddpm,cbdm --set train.steps=6 --set sample.n_per_class=4
    # --set eval.downstream=false --set eval.diversity=false --set method.cbdm_tau=0.5`)
    record = json.loads((FIXTURES / f"{method}_config.json").read_text())
    assert "cbdm_tau" in record["config"]["method"]
    folder = tmp_path / "cell"
    folder.mkdir()
    shutil.copy(FIXTURES / f"{method}_config.json", folder / "config.json")
    (folder / "model.pt").write_bytes(b"")  # a finished cell
    (folder / "done.json").write_text("{}")
    cell = Cell(**record["cell"])
    base = get_preset("smoke")
    cfg = config_module.apply_overrides(base, ["train.steps=6", "sample.n_per_class=4", "eval.downstream=false",
                                               "eval.diversity=false", "grid.methods=ddpm,cbdm",
                                               "method.cbdm.tau=0.5"])  # fmt: skip

    def check(cfg):  # as grid.run_cell does: precisions 'auto' keep what the finished cell recorded
        return check_or_write_config(folder, resolve_precisions(cell_config(cfg, cell), folder, "cpu"), cell)

    assert check(cfg) is None  # resumes: nothing to redo
    changed = config_module.apply_overrides(cfg, ["method.cbdm.tau=1.0"])  # the old record's 0.5 is read
    if method == "cbdm":
        with pytest.raises(ConfigError, match=r"method\.cbdm\.tau: 0\.5 -> 1\.0.*--force"):
            check(changed)
    else:  # ddpm reads no cbdm option
        assert check(changed) is None
    assert check(config_module.apply_overrides(cfg, ["sample.steps=5"])).redo == "sample"
    old = config_module.from_dict(Config, record["config"])  # the record itself reads as today's tree
    assert old.method.cbdm.tau == old.method.cbdm_ft.tau == 0.5 and old.method.t2h.gate == old.method.cm.gate == "t2h"


def test_check_method_passes_the_example_and_fails_a_broken_copy_naming_the_contract(tmp_path, isolated, capsys):
    fast = ["--contract", "class-probs", "--contract", "sample-weights", "--contract", "loss-terms"]
    path = _outside(tmp_path)
    assert main(["check-method", "tempered", "--plugin", str(path), *fast]) == 0
    out = capsys.readouterr().out
    assert out.count("pass ") == 6 and "tempered+resample" in out and "all 6 contracts passed" in out
    for live, old in ((METHODS._items, "tempered"), (config_module._METHOD_OPTIONS, "tempered")):
        live.pop(old)  # the broken copy registers the same name
    broken = EXAMPLE.read_text().replace("        return self.weights.to(y.device)[y]", """\
        return self.weights.to(y.device)[y]

    def loss_terms(self, model, diffusion, x0, labels, generator):
        t = torch.randint(diffusion.T, (x0.shape[0],), device=x0.device)  # the global RNG: a broken contract
        return {"ddpm": (model(diffusion.q_sample(x0, t, torch.randn_like(x0)), t, labels.model) ** 2).flatten(1).mean(1)}""")
    assert main(["check-method", "tempered", "--plugin", str(_outside(tmp_path, broken, "broken.py")), *fast]) == 1
    out = capsys.readouterr().out
    assert "FAIL  tempered                 loss-terms" in out and "global RNG" in out
    assert "2 of 6 contracts failed" in out and "tempered loss-terms, tempered+resample loss-terms" in out


def test_check_method_runs_the_resume_contract_and_an_unknown_contract_is_exit_2(tmp_path, capsys):
    assert [o.passed for o in check_method("reweight", contracts=["resume"])] == [True]
    assert main(["check-method", "ddpm", "--contract", "speed"]) == 2
    assert "unknown contract 'speed'" in capsys.readouterr().err


def test_an_entry_point_registers_its_method(tmp_path, isolated, monkeypatch):
    module = tmp_path / "ep_pkg_method.py"
    module.write_text(EXAMPLE.read_text().replace('@METHODS.register("tempered")\n', ""))  # the entry point names it
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="tempered-ep", value="ep_pkg_method:Tempered", group=plugins.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == plugins.ENTRY_POINTS else [])
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", False)
    assert plugins.load_plugins() == ["tempered-ep"]
    assert METHODS.get("tempered-ep").name == "tempered-ep" and resolve("tempered-ep+resample").parts[0] == "tempered-ep"
    assert "ep_pkg_method:Tempered" in plugins.source_of(METHODS.get("tempered-ep"))


def test_a_registry_with_a_base_checks_entries_and_names_them_from_the_key():
    reg = Registry("thing", base=Method)
    cls = reg.register("mine", type("Mine", (Method,), {}))
    assert cls.name == "mine" and reg.get("mine") is cls
    with pytest.raises(TypeError, match="must be a subclass of methods.base.Method"):
        reg.register("other", object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("mine", type("Again", (Method,), {}))
    assert all(cls.name == name for name, cls in METHODS.items())
    assert to_dict(Config())["method_code"] == ""


def test_a_plugin_method_trains_in_a_grid_and_an_edited_plugin_is_refused_without_force(tmp_path, isolated, capsys):
    path = _outside(tmp_path)
    out = tmp_path / "res"
    argv = ["run", "--preset", "smoke", "--plugin", str(path), "--methods", "tempered+resample", "--out", str(out),
            "--set", "method.tempered.power=0.8", "--set", "train.steps=2", "--set", "sample.n_per_class=2",
            "--set", "eval.downstream=false", "--set", "eval.diversity=false", "--set", "eval.real_floor=false",
            "--no-progress", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    folder = out / "runs" / "digits" / "exp-0.1" / "tempered_resample" / "seed0"
    record = json.loads((folder / "config.json").read_text())["config"]
    assert record["method"]["tempered"] == {"power": 0.8} and record["method_code"].startswith("my_method.py sha256:")
    assert "tempered+resample" in (out / "results.csv").read_text()
    path.write_text(path.read_text() + "\n# an edit\n")
    plugins._LOADED.clear()  # a new process would read the edited file
    for live in (METHODS._items, config_module._METHOD_OPTIONS):
        live.pop("tempered")
    capsys.readouterr()
    assert main(argv) == 1
    assert "different config (method_code: 'my_method.py sha256:" in capsys.readouterr().out
