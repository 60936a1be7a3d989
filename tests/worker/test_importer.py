"""The dataset import pipeline: DIGITS folder and textfile methods into the training-ready store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import dataset_store as store
from worker.datasets.importer import (
    DatasetImportError,
    ImportAborted,
    ImportOptions,
    Source,
    import_dataset,
)
from worker.datasets.resize import resize_image

# ----------------------------------------------------------------------------- helpers


def save_gray(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 HxW array as a PNG (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L").save(path)
    return path


def make_classes(root: Path, sizes: dict[str, int], shape: tuple[int, int] = (10, 12)) -> None:
    """One folder per class; every image of class k is filled with the value 40*k+20."""
    for k, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            save_gray(root / name / f"img {i:03d}.png", np.full(shape, 40 * k + 20))


def folder(root: Path) -> Source:
    return Source(kind="folder", root=root)


def opts(**kw: object) -> ImportOptions:
    base: dict[str, object] = {"width": 8, "height": 8, "channels": 1, "workers": 1}
    base.update(kw)
    return ImportOptions(**base)  # type: ignore[arg-type]


def assert_labels_match_pixels(out: Path, split: str) -> None:
    """Images made by make_classes carry their label in their pixel value."""
    reader = store.open_split(out, split)
    arr = reader.array()
    assert arr.shape[0] == len(reader.labels)
    np.testing.assert_array_equal(arr[:, 0, 0, 0], 40 * reader.labels + 20)


def files_in(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


# ----------------------------------------------------------------------------- sklearn digits


def test_sklearn_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    src = tmp_path / "digits"
    for i, (img, target) in enumerate(zip(images, digits.target, strict=True)):
        save_gray(src / str(target) / f"{i:04d}.png", img)
    out = tmp_path / "out"
    result = import_dataset(
        folder(src),
        ImportOptions(width=28, height=28, channels=1, val_pct=25.0, workers=0),
        out,
    )

    assert result.classes == [str(d) for d in range(10)]
    assert result.num_images == 1797
    assert result.skipped == 0
    assert result.image_shape == (28, 28, 1)
    assert result.encoding == "raw"
    per_class = np.bincount(digits.target, minlength=10)
    train_val = np.array(result.counts["train"]) + np.array(result.counts["val"])
    np.testing.assert_array_equal(train_val, per_class)
    assert result.counts["val"] == [round(n * 0.25) for n in per_class]
    assert result.counts["test"] == [0] * 10
    assert store.splits_present(out) == ["train", "val"]
    assert (out / "labels.txt").read_text().splitlines() == result.classes
    meta = store.read_meta(out)
    assert meta["counts"] == result.counts
    assert meta["image_shape"] == [28, 28, 1]

    train = store.open_split(out, "train")
    val = store.open_split(out, "val")
    arr = train.array()
    assert isinstance(arr, np.memmap)
    assert arr.shape == (sum(result.counts["train"]), 28, 28, 1)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), result.counts["train"])
    mean = np.load(out / "mean.npy")
    assert mean.dtype == np.float32
    assert mean.shape == (28, 28, 1)
    np.testing.assert_allclose(mean, arr.astype(np.float64).mean(axis=0), atol=1e-4)
    assert store.mean_png_bytes(out).startswith(b"\x89PNG")

    # every stored image is its source PNG resized directly, under its own label
    expected: dict[bytes, list[int]] = {}
    for i, target in enumerate(digits.target):
        with Image.open(src / str(target) / f"{i:04d}.png") as img:
            resized = resize_image(img, 28, 28, 1, "squash")
        expected.setdefault(resized.tobytes(), []).append(int(target))
    stored = [(train.image(i), int(train.labels[i])) for i in range(len(train))]
    stored += [(val.image(i), int(val.labels[i])) for i in range(len(val))]
    for img, label in stored:
        assert img.shape == (28, 28, 1)
        assert label in expected[img[:, :, 0].tobytes()]
    first = train.image(0)[:, :, 0]
    assert first.tobytes() in expected


# ----------------------------------------------------------------------------- sources


def test_wrapping_top_level_folder_is_descended(tmp_path: Path) -> None:
    src = tmp_path / "upload"
    make_classes(src / "mydata", {"cats": 4, "dogs": 4})
    (src / "__MACOSX" / "junk").mkdir(parents=True)
    (src / ".DS_Store").write_bytes(b"x")
    (src / "mydata" / "cats" / ".hidden.png").write_bytes(b"not really")
    result = import_dataset(folder(src), opts(val_pct=25.0), tmp_path / "out")
    assert result.classes == ["cats", "dogs"]
    assert result.counts == {"train": [3, 3], "val": [1, 1], "test": [0, 0]}
    assert result.skipped == 0
    assert_labels_match_pixels(tmp_path / "out", "train")


def test_textfile_method(tmp_path: Path) -> None:
    root = tmp_path / "files"
    lines = ["# comment", ""]
    for k in range(3):
        for i in range(5):
            path = save_gray(root / f"dir {k}" / f"pic {i}.png", np.full((6, 9), 40 * k + 20))
            lines.append(f"{path.relative_to(root)} {k}")
    lines.append("   ")
    list_file = tmp_path / "train.txt"
    list_file.write_text("\n".join(lines) + "\n")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("red\ngreen\nblue\n")
    source = Source(kind="textfile", root=root, list_file=list_file, labels_file=labels_file)
    out = tmp_path / "out"
    result = import_dataset(source, opts(val_pct=20.0, test_pct=20.0), out)
    assert result.classes == ["red", "green", "blue"]
    assert result.counts == {"train": [3, 3, 3], "val": [1, 1, 1], "test": [1, 1, 1]}
    for split in ("train", "val", "test"):
        assert_labels_match_pixels(out, split)


def test_textfile_bad_label_names_the_line(tmp_path: Path) -> None:
    root = tmp_path / "files"
    save_gray(root / "a.png", np.zeros((4, 4)))
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.png 0\na.png 1\n\na.png 7\n")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("x\ny\n")
    source = Source(kind="textfile", root=root, list_file=list_file, labels_file=labels_file)
    with pytest.raises(DatasetImportError, match=r"line 4.*out of range"):
        import_dataset(source, opts(), tmp_path / "out")


def test_textfile_keeps_listing_order_without_shuffle(tmp_path: Path) -> None:
    root = tmp_path / "files"
    order = [1, 0, 0, 1, 1, 0, 1, 0]
    save_gray(tmp_path / "outside.png", np.zeros((4, 4)))
    lines = ["../outside.png 0"]
    for i, label in enumerate(order):
        save_gray(root / f"{i}.png", np.full((5, 5), 40 * label + 20))
        lines.append(f"{i}.png {label}")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    (tmp_path / "labels.txt").write_text("a\nb\n")
    source = Source(
        kind="textfile",
        root=root,
        list_file=tmp_path / "list.txt",
        labels_file=tmp_path / "labels.txt",
    )
    out = tmp_path / "out"
    result = import_dataset(source, opts(shuffle=False, val_pct=0.0), out)
    assert store.open_split(out, "train").labels.tolist() == order
    assert result.skipped_samples == [
        {"path": "../outside.png", "reason": "path outside the dataset folder"}
    ]
    assert_labels_match_pixels(out, "train")


def test_separate_val_source(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"a": 6, "b": 5})
    make_classes(tmp_path / "val", {"a": 2, "b": 3})
    out = tmp_path / "out"
    result = import_dataset(
        folder(tmp_path / "train"), opts(val_pct=50.0), out, val=folder(tmp_path / "val")
    )
    assert result.counts == {"train": [6, 5], "val": [2, 3], "test": [0, 0]}
    assert_labels_match_pixels(out, "val")


def test_separate_val_source_unknown_class(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "val", {"a": 1, "zebra": 1})
    out = tmp_path / "out"
    with pytest.raises(DatasetImportError, match="zebra"):
        import_dataset(folder(tmp_path / "train"), opts(), out, val=folder(tmp_path / "val"))
    assert not [p for p in files_in(out) if p.is_file()]


# ----------------------------------------------------------------------------- bad files


def test_corrupt_and_non_image_files_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"a": 5, "b": 5})
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (src / "b" / "img 000.png").read_bytes()
    (src / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "b" / "notes.txt").write_text("hello")
    (src / "a" / "fake.jpg").write_bytes(b"GIF89a not a jpeg at all")
    out = tmp_path / "out"
    result = import_dataset(folder(src), opts(val_pct=20.0), out)
    assert result.num_images == 10
    assert result.skipped == 4
    reasons = {s["path"]: s["reason"] for s in result.skipped_samples}
    assert reasons["b/notes.txt"] == "not an image file"
    assert set(reasons) == {"b/notes.txt", "a/broken.png", "b/truncated.png", "a/fake.jpg"}
    # splits are planned on the listed files; unreadable ones are removed afterwards
    totals = np.array(result.counts["train"]) + np.array(result.counts["val"])
    assert totals.tolist() == [5, 5]
    for split in store.splits_present(out):
        assert_labels_match_pixels(out, split)
    assert store.read_meta(out)["skipped"] == 4


def test_disallowed_format_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"a": 3, "b": 3})
    Image.new("L", (10, 12), 7).save(src / "a" / "sneaky.png", format="TGA")
    result = import_dataset(folder(src), opts(), tmp_path / "out")
    assert result.skipped == 1
    assert result.skipped_samples[0]["path"] == "a/sneaky.png"
    assert result.skipped_samples[0]["reason"].startswith("not a readable PNG, JPEG")


def test_decompression_bomb_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"a": 3, "b": 3})
    save_gray(src / "a" / "huge.png", np.zeros((2000, 2000)))
    result = import_dataset(folder(src), opts(max_image_pixels=1_000_000), tmp_path / "out")
    assert result.skipped == 1
    assert result.skipped_samples[0]["path"] == "a/huge.png"
    assert "too large" in result.skipped_samples[0]["reason"]
    assert result.num_images == 6


def test_pil_bomb_warning_and_error_do_not_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    src = tmp_path / "src"
    make_classes(src, {"a": 3, "b": 3})
    save_gray(src / "a" / "warns.png", np.zeros((1000, 1200)))  # PIL warns above 1M pixels
    save_gray(src / "b" / "raises.png", np.zeros((1000, 2500)))  # PIL raises above 2M
    result = import_dataset(folder(src), opts(max_image_pixels=1_000_000), tmp_path / "out")
    reasons = {s["path"]: s["reason"] for s in result.skipped_samples}
    assert reasons == {
        "a/warns.png": "image too large (1200x1000 pixels, over the limit of 1,000,000): "
        "refused as a possible decompression bomb",
        "b/raises.png": "image too large (2,500,000 pixels, over the limit of 1,000,000): "
        "refused as a possible decompression bomb",
    }


def test_class_below_min_per_class_is_dropped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"a": 4, "b": 4, "c": 1})
    result = import_dataset(folder(src), opts(min_per_class=2), tmp_path / "out")
    assert result.classes == ["a", "b"]
    assert result.dropped_classes == ["c"]
    assert result.num_images == 8


def test_max_per_class_caps(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"a": 9, "b": 3})
    result = import_dataset(folder(src), opts(max_per_class=4, val_pct=0.0), tmp_path / "out")
    assert result.counts["train"] == [4, 3]


def test_single_class_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_classes(src, {"only": 5, "tiny": 1})
    with pytest.raises(DatasetImportError, match="at least 2 classes with at least 2 images"):
        import_dataset(folder(src), opts(), tmp_path / "out")


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "b").mkdir()
    with pytest.raises(DatasetImportError, match="no images"):
        import_dataset(folder(tmp_path / "src"), opts(), tmp_path / "out")


# ----------------------------------------------------------------------------- storage


def random_dataset(root: Path, n_per_class: int, classes: int = 3) -> None:
    """Random gray images of assorted non-square sizes."""
    rng = np.random.default_rng(42)
    for c in range(classes):
        for i in range(n_per_class):
            h, w = int(rng.integers(6, 20)), int(rng.integers(6, 20))
            save_gray(root / f"c{c}" / f"{i}.png", rng.integers(0, 256, (h, w)))


def test_png_encoding_roundtrips_like_raw(tmp_path: Path) -> None:
    random_dataset(tmp_path / "src", 12)
    (tmp_path / "src" / "c1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    raw, png = tmp_path / "raw", tmp_path / "png"
    o = {"resize_mode": "fill", "val_pct": 25.0, "test_pct": 10.0}
    r1 = import_dataset(folder(tmp_path / "src"), opts(encoding="raw", **o), raw)
    r2 = import_dataset(folder(tmp_path / "src"), opts(encoding="png", **o), png)
    assert r1.counts == r2.counts
    assert r1.skipped == r2.skipped == 1
    assert r2.encoding == "png"
    assert (png / "train_images.bin").is_file()
    assert not (png / "train_images.npy").exists()
    for split in ("train", "val", "test"):
        a, b = store.open_split(raw, split), store.open_split(png, split)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.array(), b.array())
        np.testing.assert_array_equal(a.image(1), b.image(1))
        np.testing.assert_array_equal(a.images([2, 0]), b.images([2, 0]))
    np.testing.assert_array_equal(np.load(raw / "mean.npy"), np.load(png / "mean.npy"))


def test_jpg_encoding_rgb(tmp_path: Path) -> None:
    random_dataset(tmp_path / "src", 4, classes=2)
    out = tmp_path / "out"
    result = import_dataset(folder(tmp_path / "src"), opts(encoding="jpg", channels=3), out)
    reader = store.open_split(out, "train")
    assert result.image_shape == (8, 8, 3)
    assert reader.array().shape == (len(reader), 8, 8, 3)
    assert store.to_png_bytes(reader.image(0)).startswith(b"\x89PNG")


def test_two_workers_are_byte_identical_to_one(tmp_path: Path) -> None:
    random_dataset(tmp_path / "src", 200)  # 600 images: above the in-process threshold
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        import_dataset(
            folder(tmp_path / "src"), opts(resize_mode="half_crop", workers=workers), out
        )
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert "train_images.npy" in names
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_progress_and_abort_leave_nothing(tmp_path: Path) -> None:
    random_dataset(tmp_path / "src", 5)
    seen: list[float] = []
    import_dataset(folder(tmp_path / "src"), opts(), tmp_path / "ok", progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0

    out = tmp_path / "out"
    with pytest.raises(ImportAborted):
        import_dataset(folder(tmp_path / "src"), opts(), out, should_abort=lambda: True)
    assert files_in(out) == []


def test_failure_midway_leaves_no_files(tmp_path: Path) -> None:
    random_dataset(tmp_path / "src", 200)
    out = tmp_path / "out"

    def explode(fraction: float) -> None:
        if fraction > 0.3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        import_dataset(folder(tmp_path / "src"), opts(workers=2), out, progress=explode)
    assert files_in(out) == []


# ----------------------------------------------------------------------------- symbolic links

LINK_OUTSIDE = "symbolic link to outside the dataset folder"


def other_users_data(tmp_path: Path) -> Path:
    """A data directory holding another user's dataset: a mean image and its source files."""
    other = tmp_path / "data" / "datasets" / "0b1c"
    save_gray(other / "mean.png", np.full((10, 12), 250))
    save_gray(other / "uploads" / "secret-cat.png", np.full((10, 12), 250))
    (other / "uploads" / "notes-of-bob.txt").write_text("private")
    return other


def test_folder_links_out_of_the_root_are_skipped(tmp_path: Path) -> None:
    other = other_users_data(tmp_path)
    outside = save_gray(tmp_path / "elsewhere" / "photo.png", np.full((10, 12), 250))
    src = tmp_path / "src"
    make_classes(src, {"a": 3, "b": 3})
    (src / "a" / "mean.png").symlink_to(other / "mean.png")  # a file link into the data dir
    (src / "a" / "photo.png").symlink_to(outside)  # a file link elsewhere
    (src / "b" / "theirs").symlink_to(other / "uploads", target_is_directory=True)
    (src / "stolen").symlink_to(other, target_is_directory=True)  # a whole class folder
    (src / "a" / "again.png").symlink_to(src / "b" / "img 000.png")  # inside the root: fine
    result = import_dataset(folder(src), opts(val_pct=0.0), tmp_path / "out")
    assert result.classes == ["a", "b"]
    assert result.counts["train"] == [4, 3]
    assert sorted((s["path"], s["reason"]) for s in result.skipped_samples) == [
        ("a/mean.png", LINK_OUTSIDE),
        ("a/photo.png", LINK_OUTSIDE),
        ("b/theirs", LINK_OUTSIDE),
        ("stolen", LINK_OUTSIDE),
    ]
    listed = json.dumps(result.skipped_samples)
    for private in ("secret", "notes-of-bob", "0b1c", "uploads", "elsewhere"):
        assert private not in listed, private
    reader = store.open_split(tmp_path / "out", "train")
    assert 250 not in reader.array()  # not one pixel of the other user's images


def test_wrapping_folder_link_is_not_descended(tmp_path: Path) -> None:
    make_classes(tmp_path / "theirs" / "wrapped", {"x": 3, "y": 3})
    src = tmp_path / "src"
    src.mkdir()
    (src / "mine").symlink_to(tmp_path / "theirs", target_is_directory=True)
    with pytest.raises(DatasetImportError, match="no images"):
        import_dataset(folder(src), opts(), tmp_path / "out")


def test_root_given_through_a_link_is_followed(tmp_path: Path) -> None:
    make_classes(tmp_path / "real", {"a": 3, "b": 3})
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    result = import_dataset(folder(tmp_path / "alias"), opts(val_pct=0.0), tmp_path / "out")
    assert result.counts["train"] == [3, 3]
    assert result.skipped == 0


def test_textfile_links_out_of_the_root_are_skipped(tmp_path: Path) -> None:
    other = other_users_data(tmp_path)
    root = tmp_path / "files"
    lines = []
    for k in range(2):
        for i in range(3):
            save_gray(root / f"c{k}" / f"{i}.png", np.full((5, 5), 40 * k + 20))
            lines.append(f"c{k}/{i}.png {k}")
    (root / "mean.png").symlink_to(other / "mean.png")
    (root / "via").symlink_to(other / "uploads", target_is_directory=True)
    (root / "alias.png").symlink_to(root / "c1" / "0.png")  # inside: fine
    lines += ["mean.png 0", "via/secret-cat.png 1", "alias.png 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    (tmp_path / "labels.txt").write_text("a\nb\n")
    source = Source(
        kind="textfile",
        root=root,
        list_file=tmp_path / "list.txt",
        labels_file=tmp_path / "labels.txt",
    )
    result = import_dataset(source, opts(val_pct=0.0), tmp_path / "out")
    assert result.counts["train"] == [3, 4]
    assert result.skipped_samples == [
        {"path": "mean.png", "reason": LINK_OUTSIDE},
        {"path": "via/secret-cat.png", "reason": LINK_OUTSIDE},
    ]
    assert 250 not in store.open_split(tmp_path / "out", "train").array()
