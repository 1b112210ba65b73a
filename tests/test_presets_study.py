"""The CBDM reproduction study's configuration is pinned: its published result rests on exactly these settings."""

from benchmark.core.config import to_dict
from benchmark.core.presets import PRESETS, get_preset, preset_doc
from methods import METHODS  # noqa: F401  (the methods' option sections are part of the config)


def test_repro_cbdm_cpu_is_listed_and_documented():
    assert "repro-cbdm-cpu" in PRESETS.names()
    assert "CBDM" in preset_doc("repro-cbdm-cpu") and "3 seeds" in preset_doc("repro-cbdm-cpu")


def test_repro_cbdm_cpu_settings_are_fixed():
    cfg = to_dict(get_preset("repro-cbdm-cpu"))
    assert cfg["data"] == {**cfg["data"], "dataset": "digits", "profile": "exp", "imbalance": 0.02,
                                "resolution": None, "n_max": None, "split_seed": 0, "groups": "auto"}
    assert cfg["model"] == {"ch": 32, "ch_mult": [1, 2], "attn_resolutions": [4], "num_res_blocks": 1,
                            "dropout": 0.0}
    train = {k: cfg["train"][k] for k in ("steps", "batch_size", "lr", "warmup", "ema_decay", "lr_schedule",
                                          "ema_warmup", "label_drop", "grad_clip", "method_batch_size")}
    assert train == {"steps": 6000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                     "lr_schedule": "constant", "ema_warmup": True, "label_drop": 0.1, "grad_clip": 1.0,
                     "method_batch_size": []}
    sample = {k: cfg["sample"][k] for k in ("sampler", "steps", "eta", "guidance", "n_per_class", "labels")}
    assert sample == {"sampler": "ddim", "steps": 20, "eta": 0.0, "guidance": [1.0], "n_per_class": 100,
                      "labels": "balanced"}
    ev = {k: cfg["eval"][k] for k in ("feature_space", "reference", "checkpoints", "diversity", "downstream",
                                      "classifier_epochs", "pr_k")}
    assert ev == {"feature_space": "classifier", "reference": "test", "checkpoints": [0.125, 0.25, 0.5, 1.0],
                  "diversity": True, "downstream": False, "classifier_epochs": 10, "pr_k": 3}
    assert cfg["grid"] == {"methods": ["ddpm", "cbdm"], "imbalances": [0.02], "seeds": [0, 1, 2]}
    assert cfg["method"]["cbdm"] == {"tau": 1.0, "gamma": 0.25, "prior": "train"}  # the method as it is
    assert cfg["diffusion"] == {"T": 1000, "beta_1": 1e-4, "beta_T": 0.02}


def test_repro_cbdm_cpu_budget_points_are_whole_steps_on_a_log_scale():
    from benchmark.harness.points import checkpoint_steps

    assert checkpoint_steps(get_preset("repro-cbdm-cpu")) == (750, 1500, 3000, 6000)
