"""threads = auto | N: the decision from made-up readings (affinity, cgroup quota, OMP cap, busy cores),
the readings' parsers on made-up files, and a cell that records what its stages used."""

import os
from pathlib import Path

import pytest
import torch

from benchmark.core import threads as T
from benchmark.core.config import Config, override
from benchmark.core.errors import ConfigError


def test_auto_takes_the_free_cores_and_never_fewer_than_one():
    assert T.decide("auto", affinity=2, busy=0.0).threads == 2
    one = T.decide("auto", affinity=2, busy=1.02)  # `yes > /dev/null` beside us on a 2-core machine
    assert (one.threads, one.cores, one.busy) == (1, 2, 1)
    assert one.line() == "2 cores, 1 busy: using 1 thread"
    assert T.decide("auto", affinity=2, busy=0.4).threads == 2  # short jobs of a desktop: under half a core
    assert T.decide("auto", affinity=2, busy=0.6).threads == 1
    assert T.decide("auto", affinity=2, busy=3.9).threads == 1  # more busy than cores: still one
    assert T.decide("auto", affinity=16, busy=5.2).threads == 11


def test_auto_keeps_to_affinity_quota_and_the_omp_cap():
    assert T.decide("auto", affinity=8).threads == 8  # not measured (a GPU run): every usable core
    assert T.decide("auto", affinity=64, quota=4.0).threads == 4  # a container's cpu.max, not the host's count
    assert T.decide("auto", affinity=64, quota=2.5).threads == 2  # rounded down
    assert T.decide("auto", affinity=64, quota=0.5).threads == 1
    assert T.decide("auto", affinity=64, omp=3).threads == 3  # OMP_NUM_THREADS (a user, --jobs) caps
    assert T.decide("auto", affinity=4, quota=8.0, omp=16, busy=1.0).threads == 3
    assert T.decide("auto", affinity=64, quota=4.0, busy=1.0).threads == 3  # busy cores count against the quota


def test_a_fixed_count_is_taken_as_given_whatever_the_readings():
    d = T.decide("3", affinity=2, busy=2.0)
    assert (d.threads, d.busy) == (3, 0) and d.how.startswith("threads=3 as set")
    assert T.decide(1, affinity=64).threads == 1


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5", ""])
def test_a_bad_setting_is_a_config_error_naming_the_fix(bad):
    with pytest.raises(ConfigError, match="threads=auto"):
        T.parse_threads(bad)
    cfg = override(Config(), "threads", bad)
    from benchmark.harness.preflight import check_config

    with pytest.raises(ConfigError, match="threads"):
        check_config(cfg)


def test_workers_split_the_decided_threads():
    auto = T.decide("auto", affinity=16, busy=4.0)
    assert T.per_worker(auto, 4) == 3 and T.per_worker(auto, 40) == 1
    assert T.per_worker(T.decide("2", affinity=16), 4) == 2  # a fixed count is each worker's own


def test_threads_is_a_key_that_never_redoes_a_stage_and_old_records_lack_it():
    from benchmark.core.config import stage_of, to_dict

    assert stage_of("threads") is None
    assert to_dict(Config())["threads"] == "auto"


def test_the_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path, monkeypatch):
    real_read = Path.read_text

    def fake(cgroup_line):
        def read_text(self, *a, **k):
            return cgroup_line if str(self) == "/proc/self/cgroup" else real_read(self, *a, **k)
        return read_text

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("250000 100000\n")
    monkeypatch.setattr(Path, "read_text", fake("0::/job\n"))
    assert T.cgroup_quota(tmp_path) == 2.5
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_quota(tmp_path) is None
    v1 = tmp_path / "cpu,cpuacct" / "slurm"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    monkeypatch.setattr(Path, "read_text", fake("4:cpu,cpuacct:/slurm\n"))
    assert T.cgroup_quota(tmp_path) == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1")
    assert T.cgroup_quota(tmp_path) is None


def test_busy_cores_subtract_this_process_own_time(monkeypatch):
    # two cores, 30 jiffies each in the window: others busy 30 + 15, this process 15 -> one core busy
    times = iter([(100, 1000), (100 + 60, 1000 + 60)])
    own = iter([50, 65])
    monkeypatch.setattr(T, "_cpu_times", lambda cpus: next(times))
    monkeypatch.setattr(T, "_own_jiffies", lambda: next(own))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert T.busy_cores(window=0) == pytest.approx(1.5)


def test_stage_threads_sets_torch_for_the_stage_logs_it_and_puts_it_back(monkeypatch, caplog):
    monkeypatch.setattr(T, "busy_cores", lambda window=T.LOAD_WINDOW_S: 1.0)
    monkeypatch.setattr(T, "affinity_count", lambda: 2)
    monkeypatch.setattr(T, "cgroup_quota", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    said = []
    before = torch.get_num_threads()
    with caplog.at_level("INFO", logger="ltgen"):
        with T.stage_threads("auto", "cpu", "train", say=lambda text, **k: said.append(text)) as d:
            assert torch.get_num_threads() == d.threads == 1
    assert torch.get_num_threads() == before
    assert said == ["  train: 2 cores, 1 busy: using 1 thread"]
    assert "stage train: 1 CPU thread (threads=auto (affinity 2" in caplog.text
    said.clear()
    with T.stage_threads("auto", "cuda", "sample", say=lambda text, **k: said.append(text)) as d:
        assert d.threads == 2 and d.busy == 0  # a GPU run does not measure the load
    assert said == []
    with T.stage_threads("1", "cpu", "evaluate", say=lambda text, **k: said.append(text)) as d:
        assert d.threads == torch.get_num_threads() == 1
    assert said == []  # set by hand: logged, not announced
