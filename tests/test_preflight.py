"""Checks made before any cell starts: names against their registries, and (below) what every cell needs."""

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.core.config import Config, apply_overrides, named_fields
from benchmark.core.errors import ConfigError
from benchmark.core.presets import get_preset
from benchmark.data import DATASETS, RESIZE_METHODS, builtin
from benchmark.engine.sampling import SAMPLERS
from benchmark.eval.features import FEATURE_SPACES, INCEPTION_FILE
from benchmark.harness import preflight as pf
from benchmark.harness.preflight import REGISTRIES, PreflightError, check_config
from methods import METHODS

NAMED = {key: registry for key, _names, registry, _also, _default in named_fields(Config())}
ENTRIES = {"dataset": DATASETS.names(), "method": METHODS.names(), "sampler": list(SAMPLERS),
           "feature space": FEATURE_SPACES.names(), "resize method": list(RESIZE_METHODS)}  # fmt: skip


def test_every_registry_a_field_names_has_a_check():
    assert {"data.dataset", "data.resize", "sample.sampler", "eval.feature_space", "grid.methods",
            "train.method_batch_size"} <= set(NAMED)  # fmt: skip
    assert set(NAMED.values()) <= set(REGISTRIES) == set(ENTRIES)


def _value(key: str, name: str) -> str:
    return {"grid.methods": name, "train.method_batch_size": f"{name}=8"}.get(key, name)


@pytest.mark.parametrize("key", sorted(NAMED))
def test_named_field_rejects_an_unknown_name_and_accepts_every_registered_one(key):
    entries = ENTRIES[NAMED[key]]
    with pytest.raises(ConfigError) as info:
        check_config(apply_overrides(Config(), [f"{key}={_value(key, 'nosuchname')}"]))
    message = str(info.value)
    assert message.startswith(key) and "nosuchname" in message
    assert all(name in message for name in entries), "the error lists the registered names"
    for name in entries:
        check_config(apply_overrides(Config(), [f"{key}={_value(key, name)}"]))


def test_extra_values_and_compositions_are_accepted():
    check_config(apply_overrides(Config(), ["eval.feature_space=auto", "data.dataset=imagefolder:some/folder",
                                            "grid.methods=cbdm+resample,ddpm"]))  # fmt: skip
    with pytest.raises(ConfigError, match="grid.methods"):
        check_config(apply_overrides(Config(), ["grid.methods=cbdm+ddpmm"]))


# ---------------------------------------------------------------- what every cell needs, checked once

SMOKE = ["run", "--preset", "smoke", "--no-progress", "--methods", "ddpm,cbdm", "--seeds", "0,1"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No downloads, no data in the default root, no Inception weights anywhere."""
    monkeypatch.setenv("LTGEN_OFFLINE", "1")
    monkeypatch.setenv("LTGEN_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    monkeypatch.delenv("LTGEN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return tmp_path


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "[1/" not in captured.out  # no cell started
    return captured.err


def _folder(root, *, broken: str | None = None):
    rng = np.random.RandomState(0)
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.randint(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / name / f"{i}.png")
    if broken:
        (root / "bee" / broken).write_bytes(b"\x89PNG but cut short")
    return root


def test_fashion_mnist_offline_without_the_package_fails_once_naming_the_fix(offline, capsys):
    out = offline / "out"
    err = _refused(SMOKE + ["--dataset", "fashion-mnist", "--out", str(out)], capsys)
    assert err.startswith("error: nothing was run: fashion-mnist is not available offline")
    assert err.count("apt-get install dataset-fashion-mnist") == 1 and "--data-root" in err
    assert not out.exists()  # no cell folders, no empty report


def test_image_folder_with_an_unreadable_file_fails_once_naming_it(offline, capsys):
    root = _folder(offline / "pics", broken="cut.png")
    out = offline / "out"
    err = _refused(SMOKE + ["--dataset", f"imagefolder:{root}", "--set", "data.profile=none", "--out", str(out)], capsys)
    assert err.count("error:") == 1 and err.count("fix or remove this file") == 1 and "bee/cut.png" in err
    assert not out.exists()


def test_a_feature_space_without_its_weights_fails_before_training(offline, capsys):
    root = _folder(offline / "pics")
    err = _refused(["run", "--preset", "imagefolder", "--dataset", f"imagefolder:{root}", "--no-progress",
                    "--set", "eval.feature_space=inception", "--out", str(offline / "out")], capsys)  # fmt: skip
    assert err.count(INCEPTION_FILE) >= 1 and "--set eval.feature_space=classifier" in err
    assert not (offline / "out").exists()


def test_every_problem_in_one_message(offline, capsys):
    blocker = offline / "a-file"
    blocker.write_text("")
    err = _refused(SMOKE + ["--dataset", "mnist", "--set", "eval.feature_space=dinov2", "--out",
                            str(blocker / "out")], capsys)  # fmt: skip
    assert "3 problems to fix first" in err
    assert "is a file" in err and "mnist is not available offline" in err and "DINOv2 needs" in err


def test_a_start_model_that_is_missing_fails_up_front(offline, capsys):
    err = _refused(SMOKE + ["--set", f"train.init_from={offline / 'nothing.pt'}", "--out", str(offline / "o")], capsys)
    assert "train.init_from=" in err and "is not a file" in err


@pytest.mark.parametrize("launch", [["--jobs", "2"], ["--launcher", "submitit-local"]])
def test_every_launcher_runs_the_preflight(offline, capsys, launch):
    err = _refused(SMOKE + ["--set", "eval.feature_space=inception", "--out", str(offline / "o"), *launch], capsys)
    assert INCEPTION_FILE in err and not (offline / "o").exists()


def test_evaluate_runs_the_preflight_before_reading_the_samples(offline, capsys):
    err = _refused(["evaluate", "--preset", "smoke", "--set", "eval.feature_space=inception", "--samples",
                    str(offline / "none.npz"), "--name", "mine", "--out", str(offline / "o")], capsys)  # fmt: skip
    assert INCEPTION_FILE in err


def test_a_check_added_to_the_list_is_run(offline, monkeypatch):
    def no_tuesdays(needs):
        raise ConfigError(f"{len(needs.data)} split(s) checked; come back tomorrow")

    monkeypatch.setattr(pf, "CHECKS", [*pf.CHECKS, no_tuesdays])
    cfg = get_preset("smoke")
    with pytest.raises(PreflightError, match=r"nothing was run: 1 split\(s\) checked; come back tomorrow"):
        pf.preflight(cfg, offline / "o")
    monkeypatch.setattr(pf, "CHECKS", pf.CHECKS[:-1])
    datasets = pf.preflight(cfg, offline / "o")
    assert [d.dataset for d in datasets] == ["digits"] and not (offline / "o").exists()
