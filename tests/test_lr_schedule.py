"""The learning-rate schedule and the EMA warm-up of the training loop (train.lr_schedule, train.ema_warmup)."""

import math

import pytest

from benchmark.core.config import Config, ConfigError, TrainConfig, apply_overrides
from benchmark.engine.trainer import ema_decay, learning_rate


def test_constant_is_the_old_rule_linear_warmup_then_flat():
    tc = TrainConfig(steps=100, lr=1e-3, warmup=10)
    assert [learning_rate(tc, s) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate(tc, 10) == learning_rate(tc, 99) == 1e-3
    assert learning_rate(TrainConfig(lr=2e-3, warmup=0), 0) == 2e-3


def test_cosine_decays_from_lr_at_the_end_of_warmup_to_zero_at_the_last_step():
    tc = TrainConfig(steps=110, lr=1e-3, warmup=10, lr_schedule="cosine")
    assert learning_rate(tc, 9) == pytest.approx(1e-3)  # the warmup is unchanged
    assert learning_rate(tc, 10) == pytest.approx(1e-3)
    assert learning_rate(tc, 60) == pytest.approx(0.5e-3)  # half way through the decay
    assert learning_rate(tc, 110) == pytest.approx(0.0, abs=1e-12)
    lrs = [learning_rate(tc, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(replace_steps(tc, 10), 10) == pytest.approx(1e-3)  # no decay span: no division by 0


def replace_steps(tc: TrainConfig, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=tc.lr, warmup=tc.warmup, lr_schedule=tc.lr_schedule)


def test_ema_warmup_caps_the_decay_early_and_reaches_the_set_decay():
    off = TrainConfig(ema_decay=0.999)
    on = TrainConfig(ema_decay=0.999, ema_warmup=True)
    assert ema_decay(off, 0) == ema_decay(off, 5000) == 0.999
    assert ema_decay(on, 0) == pytest.approx(0.1)
    assert ema_decay(on, 90) == pytest.approx(0.91)
    assert ema_decay(on, 100_000) == 0.999
    # the weight the random initial weights keep after 2000 steps: the reason for the warm-up
    kept = math.prod(ema_decay(on, s) for s in range(2000))
    assert kept < 1e-3 < 0.999**2000


def test_the_schedule_is_a_checked_choice():
    cfg = apply_overrides(Config(), ["train.lr_schedule=cosine", "train.ema_warmup=true"])
    assert cfg.train.lr_schedule == "cosine" and cfg.train.ema_warmup is True
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        apply_overrides(Config(), ["train.lr_schedule=linear"])
