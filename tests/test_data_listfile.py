"""listfile:LIST on generated lists: parsing, class names, reference list, the decoded cache, every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.core.config import DataConfig
from benchmark.core.errors import DataError
from benchmark.data import build_dataset, clear_source_cache, describe_groups, get_source, listfile


def make_images(root, counts, *, size=(8, 8), colour=False, prefix="train"):
    """root/<prefix>/c<k>/img<i>.png, counts[k] per class; returns the 'path label' lines."""
    rng = np.random.RandomState(len(counts))
    lines = []
    for label, count in enumerate(counts):
        folder = root / prefix / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (*size, 3) if colour else size
            Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(folder / f"img{i}.png")
            lines.append(f"{prefix}/c{label}/img{i}.png {label}")
    return lines


def write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def load(lst, cache, **kw):
    clear_source_cache()
    options = {k: kw.pop(k) for k in ("list_root", "reference_list", "class_names") if k in kw}
    if "reference_list" not in options:
        kw.setdefault("reference_protocol", "balanced")  # smallest class // 5 held out of every class
    return get_source(f"listfile:{lst}", data_root=cache, options=options, **kw)


def test_list_loads_with_names_groups_and_holdout(tmp_path):
    lines = make_images(tmp_path, [10, 6, 5])
    lst = write_list(tmp_path / "train.txt", ["", *lines[::-1]])  # order is the list's, blank lines skipped
    src = load(lst, tmp_path / "cache", class_names="folders")
    assert src.class_names == ["c0", "c1", "c2"] and src.channels == 1 and src.resolution == 8
    assert torch.bincount(src.test.labels).tolist() == [1, 1, 1] and "hold-out, 1 per class" in src.test_note
    assert src.hflip and src.group_rule == "thirds"
    pixels = np.asarray(Image.open(tmp_path / "train/c2/img4.png"))
    assert any(np.array_equal(pixels, img[0].numpy()) for img in src.train.images)
    assert load(lst, tmp_path / "cache").class_names == ["0", "1", "2"]
    names = tmp_path / "names.txt"
    names.write_text("ant\nbee\n\ncat\n")
    assert load(lst, tmp_path / "cache", class_names=str(names)).class_names == ["ant", "bee", "cat"]


def test_reference_list_root_and_profiles(tmp_path):
    data = tmp_path / "images"
    train = make_images(data, [30, 30, 30], colour=True)
    test = make_images(data, [4, 4, 4], colour=True, prefix="test")
    (tmp_path / "lists").mkdir()
    lst = write_list(tmp_path / "lists" / "train.txt", train)
    ref = write_list(tmp_path / "lists" / "test.txt", test)
    src = load(lst, tmp_path / "cache", list_root=str(data), reference_list=str(ref))
    assert len(src.train) == 90 and torch.bincount(src.test.labels).tolist() == [4, 4, 4]
    assert src.channels == 3 and src.test_note.startswith("reference list")
    cfg = dict(dataset=f"listfile:{lst}", data_root=str(tmp_path / "cache"), list_root=str(data),
               reference_list=str(ref))  # fmt: skip
    clear_source_cache()
    assert build_dataset(DataConfig(**cfg, profile="none")).counts.tolist() == [30, 30, 30]
    assert build_dataset(DataConfig(**cfg, profile="exp", imbalance=0.1)).counts.tolist() == [30, 9, 3]


def test_thresholds_for_many_classes(tmp_path):
    counts = [102, 101, 21, 20] + [2] * 8  # 12 classes, one each held out: many > 100, few < 20
    lst = write_list(tmp_path / "train.txt", make_images(tmp_path, counts, size=(2, 2)))
    ds = build_dataset(DataConfig(dataset=f"listfile:{lst}", data_root=str(tmp_path / "cache"), profile="none",
                                  reference_protocol="balanced"))  # fmt: skip
    groups = describe_groups(ds)
    assert groups["many"] == [0] and groups["medium"] == [1, 2] and groups["few"] == list(range(3, 12))


def test_resize_matches_imagefolder_and_needs_resolution_for_mixed_sizes(tmp_path):
    lines = make_images(tmp_path, [3, 3], size=(12, 6), colour=True)
    lines += make_images(tmp_path, [0, 0, 3], size=(10, 10), colour=True)  # a third class, another size
    lst = write_list(tmp_path / "train.txt", lines)
    with pytest.raises(DataError, match=r"train\.txt:1: image is 12x6, not square; set data\.resolution"):
        load(lst, tmp_path / "cache")
    square_first = write_list(tmp_path / "square.txt", lines[6:] + lines[:6])
    with pytest.raises(DataError, match=r"square\.txt:4: image is 12x6 but the first image is 10x10.*data\.resolution"):
        load(square_first, tmp_path / "cache")
    src = load(lst, tmp_path / "cache", resolution=8, resize="area")
    folder = get_source(f"imagefolder:{tmp_path / 'train'}", resolution=8, resize="area")
    assert src.resize == "area" and src.source_id.endswith(":8px:area")
    mine = sorted(img.numpy().tobytes() for img in torch.cat([src.train.images, src.test.images]))
    theirs = sorted(img.numpy().tobytes() for img in torch.cat([folder.train.images, folder.test.images]))
    assert mine == theirs  # same crop and resize as imagefolder


def test_cache_is_read_and_keyed_by_content_and_resize(tmp_path, monkeypatch):
    lines = make_images(tmp_path, [6, 5])
    lst = write_list(tmp_path / "train.txt", lines)
    cache = tmp_path / "cache"
    first = load(lst, cache, resolution=4)
    assert len(list((cache / listfile.CACHE_FOLDER).glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this list")

    monkeypatch.setattr(listfile, "decode_images", no_decoding)
    again = load(lst, cache, resolution=4)
    assert torch.equal(again.train.images, first.train.images) and again.source_id == first.source_id
    for changed in (dict(resolution=4, resize="area"), dict(resolution=5)):
        with pytest.raises(AssertionError, match="decoded again"):
            load(lst, cache, **changed)
    write_list(lst, lines[:-1])
    with pytest.raises(AssertionError, match="decoded again"):
        load(lst, cache, resolution=4)
    monkeypatch.undo()
    assert len(load(lst, cache, resolution=4).train) == len(lines) - 1 - 2


def broken(path):
    path.write_bytes(b"not a png")
    return "train/c1/broken.png 1"


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda ls, root: ls + ["train/c0/nothere.png 0"], r"train\.txt:12: image .*nothere\.png does not exist"),
        (lambda ls, root: ls + ["train/c0/img0.png 1"], r"train\.txt:12: train/c0/img0\.png is listed twice \(first at line 1\)"),
        (lambda ls, root: ls[:3] + ["train/c0/img0.png"] + ls[3:], r"train\.txt:4: expected 'relative/path label'"),
        (lambda ls, root: ls[:3] + ["train/c0/img9.png zero"] + ls[3:], r"train\.txt:4: expected"),
        (lambda ls, root: ls + ["train/c0/bad.png -1"], r"train\.txt:12: label -1 is negative"),
        (lambda ls, root: ls + [broken(root / "train/c1/broken.png")], r"train\.txt:12: cannot read image .*broken\.png"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_and_line_and_cache_nothing(tmp_path, edit, pattern):
    lines = make_images(tmp_path, [6, 5])
    lst = write_list(tmp_path / "train.txt", edit(lines, tmp_path))
    with pytest.raises(DataError, match=pattern):
        load(lst, tmp_path / "cache")
    assert not list(tmp_path.glob("cache/**/*.npz")) and not list(tmp_path.glob("cache/**/*.tmp"))


def test_label_outside_the_names_and_other_errors(tmp_path):
    lines = make_images(tmp_path, [3, 3, 3])
    lst = write_list(tmp_path / "train.txt", lines)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(DataError, match=r"train\.txt:7: label 2 is outside 0\.\.1 \(2 classes\)"):
        load(lst, tmp_path / "cache", class_names=str(names))
    ref = write_list(tmp_path / "test.txt", lines[:1])
    with pytest.raises(DataError, match=r"test\.txt:1: .*also a training image \(.*train\.txt:1\)"):
        load(lst, tmp_path / "cache", reference_list=str(ref))
    moved = write_list(tmp_path / "moved.txt", [*lines[:5], "train/c1/img2.png 0", *lines[6:]])
    with pytest.raises(DataError, match=r"moved\.txt:6: class 0 is in folder 'c1' here but in 'c0' at .*moved\.txt:1"):
        load(moved, tmp_path / "cache", class_names="folders")
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "absent.txt", tmp_path / "cache")
    with pytest.raises(DataError, match=r"data\.list_root applies to listfile:\.\.\. only"):
        get_source("digits", options={"list_root": str(tmp_path)})
    with pytest.raises(DataError, match="data.reference_list"):
        get_source(f"listfile:{lst}", data_root=tmp_path / "cache", reference_folder=tmp_path)
    assert not list(tmp_path.glob("cache/**/*.npz"))


def test_imagenetlt64_preset_scores_against_the_test_list():
    from benchmark.core.presets import get_preset

    cfg = get_preset("imagenetlt64")
    assert cfg.data.dataset.startswith("listfile:") and cfg.data.resolution == 64 and cfg.data.profile == "none"
    assert cfg.model.ch == 128 and cfg.model.ch_mult == (1, 2, 2, 2) and cfg.model.attn_resolutions == (32,)
    assert cfg.protocol == "ddim" and cfg.eval.reference == "test" and cfg.sample.n_per_class == 50
    for protocol in ("ddim", "ddpm1000", "ddim100"):  # no balanced train set when the list is the long tail
        assert get_preset("imagenetlt64", protocol).eval.reference == "test"
    assert get_preset("cifar100lt", "ddim").eval.reference == "train-balanced"


def test_listfile_end_to_end_on_the_smoke_preset(tmp_path):
    from sklearn.datasets import load_digits

    from benchmark.cli import main
    from benchmark.harness.results import read_results

    digits = load_digits()
    lines, ref = [], []
    for c in range(10):
        idx = np.nonzero(digits.target == c)[0]
        for k, i in enumerate(idx[: 40 - 3 * c + 8]):  # 40 .. 13 training images, 8 reference images per class
            rel = f"img/{c}/{i}.png"
            (tmp_path / "img" / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 15.9).astype(np.uint8)).save(tmp_path / rel)
            (ref if k < 8 else lines).append(f"{rel} {c}")
    lst, test = write_list(tmp_path / "train.txt", lines), write_list(tmp_path / "test.txt", ref)
    out = tmp_path / "out"
    args = ["run", "--preset", "smoke", "--dataset", f"listfile:{lst}", "--methods", "ddpm,cm+t2h", "--out", str(out),
            "--no-progress", "--no-report", "--data-root", str(tmp_path / "cache"), "--set", "data.profile=none",
            "--set", f"data.reference_list={test}", "--set", "data.class_names=folders", "--set", "train.steps=4",
            "--set", "sample.n_per_class=4", "--set", "eval.downstream=false"]  # fmt: skip
    assert main(args) == 0
    table = read_results(out)
    for method in ("ddpm", "cm+t2h"):  # cm in a smoke grid: trained, sampled from model.pt, scored
        fid = table[(table.method == method) & (table.metric == "fid")]
        assert (fid.group == "class").sum() == 10  # per class: NaN with the reason below 20 reference images
        assert np.isfinite(fid[fid.group == "all"].value).all()
    assert set(table.dataset) == {f"listfile:{lst}"}
    counts = table[(table.metric == "train_count") & (table.method == "ddpm")].value.astype(int)
    assert sorted(counts) == sorted(40 - 3 * c for c in range(10))
