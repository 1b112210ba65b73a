"""Sources (Fashion-MNIST from the Debian files, MNIST IDX, CIFAR offline errors, digits)
and build_dataset on top of them."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import torch

from benchmark.core.config import DataConfig
from benchmark.core.errors import ConfigError, DataError
from benchmark.data import (
    RESIZE_METHODS,
    build_dataset,
    builtin,
    class_counts,
    clear_source_cache,
    data_table,
    describe_groups,
    get_source,
    select_longtail,
)

needs_debian_fmnist = pytest.mark.skipif(
    not builtin.DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"{builtin.DEBIAN_FASHION_MNIST} missing: apt-get install dataset-fashion-mnist to run this test",
)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No downloads, and a default data root that holds nothing."""
    monkeypatch.setenv("LTGEN_OFFLINE", "1")
    monkeypatch.setenv("LTGEN_DATA_ROOT", str(tmp_path / "default-root"))
    return tmp_path


@needs_debian_fmnist
def test_fashion_mnist_from_debian_files(offline):
    src = get_source("fashion-mnist", data_root=offline / "empty")
    assert src.train.images.shape == (60000, 1, 28, 28) and src.train.images.dtype == torch.uint8
    assert src.test.images.shape == (10000, 1, 28, 28)
    assert src.train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published order
    assert torch.bincount(src.train.labels).tolist() == [6000] * 10
    assert torch.bincount(src.test.labels).tolist() == [1000] * 10
    assert src.class_names[9] == "Ankle boot" and src.hflip and src.group_rule == "thirds"
    assert src.channels == 1 and src.resolution == 28 and src.resize == "none"
    assert get_source("fashion-mnist", data_root=offline / "empty") is src  # cached: free the 2nd time
    ds = build_dataset(DataConfig(dataset="fashion-mnist", data_root=str(offline / "empty"), imbalance=0.01))
    assert ds.counts.tolist() == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert len(ds) == 14886 and ds.groups == ["many"] * 3 + ["medium"] * 3 + ["few"] * 4
    assert np.array_equal(ds.indices, select_longtail(src.train.labels.numpy(), ds.counts, seed=0))


def test_fashion_mnist_missing_says_how_to_install(offline, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", offline / "no-debian")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-root"):
        get_source("fashion-mnist", data_root=offline / "empty")


def _write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") if gz else open(path, "wb") as handle:
        handle.write(data)


def test_mnist_reads_idx_files_from_data_root(offline):
    raw = offline / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for split, n, gz in (("train", 40, True), ("t10k", 20, False)):
        suffix = ".gz" if gz else ""
        _write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", rng.randint(0, 256, (n, 28, 28)), gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
    src = get_source("mnist", data_root=offline / "root")
    assert src.train.images.shape == (40, 1, 28, 28) and len(src.test) == 20
    assert not src.hflip and src.class_names[0].startswith("0")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 20, 1, 2]))
    clear_source_cache()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is truncated or damaged"):
        get_source("mnist", data_root=offline / "root")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an IDX file"):
        get_source("mnist", data_root=offline / "root")


@pytest.mark.parametrize(
    "spec,hint",
    [
        ("mnist", "offline. Run once on a machine with internet (torchvision fetches it into DATA_ROOT/MNIST/raw) and copy "
                  "that folder, or put train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-python.tar.gz, extract it so that DIR/cifar-10-batches-py/ exists"),
        ("cifar100", "cifar-100-python.tar.gz, extract it so that DIR/cifar-100-python/ exists"),
    ],
)
def test_unavailable_offline_says_where_to_put_files(offline, spec, hint):
    with pytest.raises(DataError) as err:
        get_source(spec, data_root=offline / "empty")
    message = str(err.value)
    assert "not available offline" in message and hint in message and "--data-root" in message
    assert "$LTGEN_OFFLINE" in message


def test_failed_download_is_reported(monkeypatch):
    monkeypatch.delenv("LTGEN_OFFLINE", raising=False)

    def fail():
        raise RuntimeError("Name or service not known\nmore")

    assert builtin._try_download(fail) == "Download failed: Name or service not known."


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        get_source("cifar-10")
    message = str(err.value)
    for name in ("cifar10", "cifar100", "digits", "fashion-mnist", "mnist", "imagefolder:PATH"):
        assert name in message
    assert "Did you mean 'cifar10'" in message


def test_digits_source():
    src = get_source("digits")
    assert src.train.images.shape == (1497, 1, 8, 8) and len(src.test) == 300
    assert torch.bincount(src.test.labels).tolist() == [30] * 10
    assert int(src.train.images.max()) == 255 and int(src.train.images.min()) == 0
    assert not src.hflip and src.group_rule == "thirds" and "hold-out" in src.test_note
    clear_source_cache()
    again = get_source("digits")
    assert again is not src and torch.equal(again.test.labels, src.test.labels)
    assert torch.equal(again.train.images, src.train.images) and again.source_id == src.source_id
    with pytest.raises(DataError, match="takes no ':' argument"):
        get_source("digits:extra")
    with pytest.raises(DataError, match="imagefolder datasets only"):
        get_source("digits", reference_folder="/tmp")


def test_resize_methods_recorded_in_source_id():
    native = get_source("digits")
    assert native.source_id.endswith(":8px:none")
    assert get_source("digits", resolution=8).source_id == native.source_id  # no-op resize
    ids = set()
    for method in RESIZE_METHODS:
        src = get_source("digits", resolution=16, resize=method)
        assert src.train.images.shape[-2:] == (16, 16) and src.train.images.dtype == torch.uint8
        assert src.resize == method and src.resolution == 16 and src.source_id.endswith(f":16px:{method}")
        ids.add(src.source_id)
    assert len(ids) == len(RESIZE_METHODS) and native.source_id not in ids
    with pytest.raises(DataError, match="unknown resize method 'lanczos'"):
        get_source("digits", resolution=16, resize="lanczos")
    with pytest.raises(DataError, match="positive integer"):
        get_source("digits", resolution=0)


def test_build_dataset_profiles_on_digits(tmp_path):
    pool = np.bincount(get_source("digits").train.labels.numpy())
    ds = build_dataset(DataConfig(dataset="digits", imbalance=0.1))
    expected = class_counts("exp", n_max=int(pool.min()), num_classes=10, imbalance=0.1)
    assert ds.counts.tolist() == expected.tolist() and ds.imbalance == 0.1 and ds.profile == "exp"
    assert ds.train_images.shape == (len(ds), 1, 8, 8)
    assert np.bincount(ds.train_labels.numpy(), minlength=10).tolist() == expected.tolist()
    assert re.fullmatch(r"[0-9a-f]{16}", ds.fingerprint)
    assert build_dataset(DataConfig(dataset="digits", imbalance=0.1)).fingerprint == ds.fingerprint
    assert build_dataset(DataConfig(dataset="digits", imbalance=0.1, split_seed=1)).fingerprint != ds.fingerprint
    assert build_dataset(DataConfig(dataset="digits", imbalance=0.1, resolution=16)).fingerprint != ds.fingerprint
    step = build_dataset(DataConfig(dataset="digits", profile="step", imbalance=0.1, n_max=100))
    assert step.counts.tolist() == [100] * 5 + [10] * 5
    none = build_dataset(DataConfig(dataset="digits", profile="none"))
    assert none.counts.tolist() == pool.tolist() and none.imbalance is None and len(none) == 1497
    counts = tmp_path / "counts.csv"
    counts.write_text("\n".join(f"{c},{5 + c}" for c in range(10)))
    from_file = build_dataset(DataConfig(dataset="digits", profile="file", counts_file=str(counts)))
    assert from_file.counts.tolist() == [5 + c for c in range(10)] and from_file.imbalance is None
    # digits' rule is thirds, by count rank: the ascending file puts the last classes in 'many'
    assert from_file.groups == ["few"] * 4 + ["medium"] * 3 + ["many"] * 3


def test_empty_groups_are_reported():
    ds = build_dataset(DataConfig(dataset="digits", imbalance=1.0, n_max=50, groups="thresholds"))
    assert describe_groups(ds) == {"many": [], "medium": list(range(10)), "few": []}
    assert ds.group_classes("few") == []
    table = data_table(ds)
    assert list(table.columns)[:4] == ["class", "name", "count", "group"] and len(table) == 10
    assert list(table.columns)[4:] == ["reference", "ref_from", "eval_train", "eval_val", "eval_test"]
    assert table.attrs["empty_groups"] == ["many", "few"] and table.attrs["fingerprint"] == ds.fingerprint
    assert table.attrs["total"] == 500
    with pytest.raises(DataError, match="valid groups"):
        ds.group_classes("tail")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"imbalance": 0.001}, r"9 \('9'\) would get 0 images.*smallest valid imbalance here is 0\.00695"),
        ({"n_max": 1000}, r"class 0 \('0'\) has only 148 images.*set data.n_max to at most 144"),
        ({"profile": "file"}, "profile 'file' needs data.counts_file"),
    ],
)
def test_build_dataset_errors(overrides, match):
    with pytest.raises(DataError, match=match):
        build_dataset(DataConfig(dataset="digits", **overrides))


@pytest.mark.parametrize("imbalance", [0.0, 1.5])
def test_an_imbalance_outside_0_1_is_refused_when_the_config_is_built(imbalance):
    with pytest.raises(ConfigError, match=rf"data.imbalance={imbalance} is out of range: must be in \(0, 1\]"):
        DataConfig(dataset="digits", imbalance=imbalance)


def test_profile_and_group_rule_are_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match="data.profile='zipf' is not a valid value.*exp.*step.*none.*file"):
        DataConfig(dataset="digits", profile="zipf")
    with pytest.raises(ConfigError, match="data.groups='halves' is not a valid value.*auto.*thresholds.*thirds"):
        DataConfig(dataset="digits", groups="halves")


def test_counts_file_must_match_classes_and_pool(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("10\n5\n")
    with pytest.raises(DataError, match="has 2 counts but the dataset has 10 classes"):
        build_dataset(DataConfig(dataset="digits", profile="file", counts_file=str(short)))
    big = tmp_path / "big.txt"
    big.write_text("\n".join(["500"] + ["5"] * 9))
    with pytest.raises(DataError, match=r"class 0 \('0'\) has only 148 images.*lower that count"):
        build_dataset(DataConfig(dataset="digits", profile="file", counts_file=str(big)))


def test_cifar_layout_from_torchvision_files(offline, monkeypatch):
    """Tiny fake CIFAR-10 batches in torchvision's format (checksums patched out)."""
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = offline / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = [(np.arange(3072) + k) % 256 for k in range(12)]
    for name, part in [(f"data_batch_{i}", rows[2 * i - 2 : 2 * i]) for i in range(1, 6)] + [("test_batch", rows[10:])]:
        entry = {"data": np.stack(part).astype(np.uint8), "labels": [len(name) % 10, 3]}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    for root in (offline / "root", folder):  # the parent, or the extracted folder itself
        clear_source_cache()
        src = get_source("cifar10", data_root=root)
        assert src.train.images.shape == (10, 3, 32, 32) and len(src.test) == 2
        for k in range(10):  # CIFAR rows are R, G, B planes: NCHW is a plain reshape
            assert np.array_equal(src.train.images[k].numpy(), rows[k].reshape(3, 32, 32))
        assert src.class_names == names and src.hflip and src.group_rule == "thirds"
