"""imagefolder:PATH on generated folders: channels, hold-out, reference folder, every error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.core.config import DataConfig
from benchmark.core.errors import DataError
from benchmark.data import build_dataset, describe_groups, get_source


def make_folder(root, sizes, *, mode="L", size=(8, 8), colour_class=None):
    """One subfolder per class with sizes[name] small PNGs (deterministic content)."""
    rng = np.random.RandomState(0)
    for name, count in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = size
            if mode == "L" and name != colour_class:
                img = Image.fromarray(rng.randint(0, 256, (h, w), dtype=np.uint8), mode="L")
            else:
                img = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
            img.save(root / name / f"img{i:03d}.png")
    return root


def test_grayscale_folder_with_holdout(tmp_path):
    root = make_folder(tmp_path / "set", {"ant": 10, "bee": 6, "cat": 5})
    (root / "ant" / "notes.txt").write_text("not an image: ignored")
    src = get_source(f"imagefolder:{root}")
    assert src.class_names == ["ant", "bee", "cat"] and src.channels == 1 and src.resolution == 8
    assert torch.bincount(src.test.labels).tolist() == [2, 1, 1]  # default holdout: round(0.2 n), at least 1
    assert torch.bincount(src.train.labels).tolist() == [8, 5, 4]
    assert src.hflip and src.group_rule == "thirds" and "hold-out of 0.2 per class" in src.test_note
    assert src.reference_protocol == "holdout-0.2-min20" and src.fallback_classes == (0, 1, 2)
    old = get_source(f"imagefolder:{root}", reference_protocol="balanced")  # the old rule, by name
    assert torch.bincount(old.test.labels).tolist() == [1, 1, 1]  # smallest class 5 // 5
    assert torch.bincount(old.train.labels).tolist() == [9, 5, 4] and "hold-out, 1 per class" in old.test_note
    assert old.reference_protocol == "balanced-1" and old.source_id != src.source_id
    again = get_source(f"imagefolder:{root}")
    assert again is src  # unchanged folder: cached
    original = np.asarray(Image.open(root / "ant" / "img000.png"))
    loaded = [img[0].numpy() for img in src.train.images] + [img[0].numpy() for img in src.test.images]
    assert any(np.array_equal(original, img) for img in loaded)
    ds = build_dataset(DataConfig(dataset=f"imagefolder:{root}", profile="none", reference_protocol="balanced"))
    assert ds.counts.tolist() == [9, 5, 4] and describe_groups(ds) == {"many": [0], "medium": [1], "few": [2]}


def test_rgb_saved_gray_is_one_channel_and_colour_is_three(tmp_path):
    gray_rgb = tmp_path / "grayrgb"
    for name in ("a", "b"):
        (gray_rgb / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(gray_rgb / name / f"{i}.png")
    assert get_source(f"imagefolder:{gray_rgb}").channels == 1
    colour = make_folder(tmp_path / "colour", {"a": 3, "b": 3}, colour_class="b")
    src = get_source(f"imagefolder:{colour}")
    assert src.channels == 3 and src.train.images.shape[1:] == (3, 8, 8)


def test_reference_folder(tmp_path):
    root = make_folder(tmp_path / "train", {"a": 4, "b": 2})
    ref = make_folder(tmp_path / "ref", {"a": 3, "b": 3}, colour_class="a")
    src = get_source(f"imagefolder:{root}", reference_folder=ref)
    assert len(src.train) == 6 and torch.bincount(src.test.labels).tolist() == [3, 3]
    assert src.channels == 3 and "reference folder" in src.test_note  # colour in ref -> both RGB
    assert src.reference_protocol == "folder" and src.fallback_classes == ()
    with pytest.raises(DataError, match="reference_folder is set too"):
        get_source(f"imagefolder:{root}", reference_folder=ref, reference_protocol="holdout")
    with pytest.raises(DataError, match="reference_protocol=folder needs data.reference_folder"):
        get_source(f"imagefolder:{root}", reference_protocol="folder")
    bad_ref = make_folder(tmp_path / "badref", {"a": 2, "c": 2})
    with pytest.raises(DataError, match="same class subfolders.*missing: b; extra: c"):
        get_source(f"imagefolder:{root}", reference_folder=bad_ref)


def test_mixed_sizes_need_a_resolution(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3})
    make_folder(tmp_path / "set", {"c": 3}, size=(12, 6))
    with pytest.raises(DataError, match="different or non-square sizes.*data.resolution"):
        get_source(f"imagefolder:{root}")
    src = get_source(f"imagefolder:{root}", resolution=8, resize="area")
    assert src.train.images.shape[1:] == (1, 8, 8) and src.resize == "area"
    assert src.source_id.endswith(":8px:area")


def test_many_classes_use_thresholds(tmp_path):
    root = make_folder(tmp_path / "set", {f"c{i:02d}": 2 for i in range(11)}, size=(2, 2))
    assert get_source(f"imagefolder:{root}").group_rule == "thresholds"


def test_source_id_follows_file_changes(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 5, "b": 5})
    before = get_source(f"imagefolder:{root}").source_id
    target = root / "b" / "img004.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a visible change of time
    after = get_source(f"imagefolder:{root}")
    assert after.source_id != before
    ds_a = build_dataset(DataConfig(dataset=f"imagefolder:{root}", imbalance=0.25))
    ds_b = build_dataset(DataConfig(dataset=f"imagefolder:{root}", imbalance=0.25))
    assert ds_a.fingerprint == ds_b.fingerprint


def test_error_fewer_than_two_classes(tmp_path):
    root = make_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match="has 1 class subfolder.*at least 2 classes"):
        get_source(f"imagefolder:{root}")


def test_error_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder\\(s\\) empty hold no images"):
        get_source(f"imagefolder:{root}")


def test_error_unreadable_file_is_named(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3})
    broken = root / "b" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot read image {broken}.*fix or remove this file"):
        get_source(f"imagefolder:{root}")


def test_error_missing_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        get_source(f"imagefolder:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="imagefolder needs a path"):
        get_source("imagefolder")


def test_error_class_too_small_for_holdout(tmp_path):
    root = make_folder(tmp_path / "set", {"a": 3, "b": 1})
    with pytest.raises(DataError, match="class folder\\(s\\) b .*hold 1 image.*reference folder"):
        get_source(f"imagefolder:{root}")


def test_reference_protocols_on_a_long_tailed_folder(tmp_path):
    root = make_folder(tmp_path / "lt", {"a": 150, "b": 60, "c": 20, "d": 6}, size=(2, 2))
    src = get_source(f"imagefolder:{root}")  # holdout 0.2, min 20
    assert torch.bincount(src.test.labels).tolist() == [30, 12, 4, 1]
    assert torch.bincount(src.train.labels).tolist() == [120, 48, 16, 5]
    assert src.fallback_classes == (1, 2, 3) and "train-fallback" in src.test_note
    strict = get_source(f"imagefolder:{root}", reference_protocol="holdout-only", reference_fraction=0.1)
    assert torch.bincount(strict.test.labels).tolist() == [15, 6, 2, 1] and strict.fallback_classes == ()
    assert strict.reference_protocol == "holdout-only-0.1"
    lower = get_source(f"imagefolder:{root}", reference_min=10)
    assert lower.fallback_classes == (2, 3) and lower.reference_protocol == "holdout-0.2-min10"
    # the held-out images are real images of their class, disjoint from the train pool
    pool = {bytes(x.numpy()) for x in src.train.images}
    assert not any(bytes(x.numpy()) in pool for x in src.test.images)
    with pytest.raises(DataError, match="unknown data.reference_protocol 'half'.*holdout-only"):
        get_source(f"imagefolder:{root}", reference_protocol="half")
    with pytest.raises(DataError, match="reference_fraction must lie in"):
        get_source(f"imagefolder:{root}", reference_fraction=1.5)
    with pytest.raises(DataError, match="applies to folders without a reference split.*digits"):
        get_source("digits", reference_protocol="holdout")
