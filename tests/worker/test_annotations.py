"""Detection and segmentation imports: four box formats into one stored form, and every bad
annotation counted or refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared import dataset_store as store
from shared import images
from tests import shapes
from worker.datasets.annotated import AnnotatedOptions, import_annotated
from worker.datasets.importer import DatasetImportError, ImportOptions, Source

SAMPLES = shapes.render(24, 96, 80, seed=3)


def _import(
    folder: Path,
    out: Path,
    task: str = "detection",
    fmt: str = "auto",
    classes: list[str] | None = None,
    **options: object,
):  # type: ignore[no-untyped-def]
    opts = ImportOptions(
        **{"width": 96, "height": 80, "val_pct": 25.0, "seed": 5, **options}  # type: ignore[arg-type]
    )
    return import_annotated(
        Source(kind="folder", root=folder), opts, AnnotatedOptions(task, fmt, classes), out
    )


def _stored(out: Path, split: str) -> list[list[tuple[str, tuple[float, ...]]]]:
    """Per stored image, its (class name, box) pairs."""
    classes = store.read_classes(out)
    boxes = np.load(out / f"{split}_boxes.npy")
    labels = np.load(out / f"{split}_box_labels.npy")
    offsets = np.load(out / f"{split}_box_offsets.npy")
    return [
        sorted(
            (classes[int(labels[j])], tuple(round(float(v), 3) for v in boxes[j]))
            for j in range(offsets[i], offsets[i + 1])
        )
        for i in range(len(offsets) - 1)
    ]


def test_the_four_detection_formats_store_the_same_boxes(tmp_path: Path) -> None:
    stored = {}
    for fmt, write in shapes.WRITERS.items():
        folder = tmp_path / fmt
        write(folder, SAMPLES)
        result = _import(folder, tmp_path / f"{fmt}-out")
        assert result.annotation_format == fmt  # told from the files alone
        assert result.skipped == 0, result.skipped_samples
        assert result.split_images == {"train": 18, "val": 6}
        stored[fmt] = {s: _stored(tmp_path / f"{fmt}-out", s) for s in ("train", "val")}
        total = sum(len(s.boxes) for s in SAMPLES)
        assert sum(sum(c) for c in result.counts.values()) == total
    assert stored["voc"] == stored["coco"]
    assert stored["kitti"] == stored["coco"]
    for split in ("train", "val"):  # YOLO's fractions round to a thousandth of a pixel
        for yolo, coco in zip(stored["yolo"][split], stored["coco"][split], strict=True):
            assert [n for n, _ in yolo] == [n for n, _ in coco]
            assert np.allclose([b for _, b in yolo], [b for _, b in coco], atol=0.01)
    expected = sorted(
        (shapes.CLASSES[c], (float(x0), float(y0), float(x1), float(y1)))
        for s in SAMPLES
        for c, x0, y0, x1, y1 in s.boxes
    )
    everything = sorted(b for split in stored["coco"].values() for image in split for b in image)
    assert everything == expected  # same size: the boxes are stored as annotated
    meta = store.read_meta(tmp_path / "coco-out")
    assert meta["task"] == "detection"
    assert meta["classes"] == list(shapes.CLASSES)  # COCO's categories, in id order


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_boxes_move_with_their_image_in_every_resize_mode(mode: str, tmp_path: Path) -> None:
    """A white box on black, resized 120x60 -> 48x48: the stored box covers the white pixels."""
    img = Image.new("RGB", (120, 60), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((50, 10, 79, 39), fill=(255, 255, 255))
    folder = tmp_path / "in"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    img.save(folder / "images" / "a.png")
    img.save(folder / "images" / "b.png")
    (folder / "classes.txt").write_text("box\n")
    for name in ("a", "b"):
        (folder / "labels" / f"{name}.txt").write_text("0 0.541667 0.416667 0.25 0.5\n")
    out = tmp_path / "out"
    _import(folder, out, width=48, height=48, channels=1, resize_mode=mode, val_pct=0.0)
    stored = np.load(out / "train_images.npy")[0, :, :, 0]
    x0, y0, x1, y1 = np.load(out / "train_boxes.npy")[0]
    sx, sy, dx, dy = images.geometry(120, 60, 48, 48, mode)
    inside = np.zeros_like(stored, dtype=bool)  # the image's own pixels, not fill's noise
    inside[
        max(0, int(dy)) : int(np.ceil(60 * sy + dy)), max(0, int(dx)) : int(np.ceil(120 * sx + dx))
    ] = True
    ys, xs = np.nonzero((stored > 128) & inside)
    assert abs(xs.min() - x0) <= 1.0, (mode, xs, x0)
    assert abs(xs.max() + 1 - x1) <= 1.0, (mode, xs, x1)
    assert abs(ys.min() - y0) <= 1.0, (mode, ys, y0)
    assert abs(ys.max() + 1 - y1) <= 1.0, (mode, ys, y1)


def _yolo_folder(folder: Path, lines: dict[str, str], size: tuple[int, int] = (64, 48)) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "classes.txt").write_text("a\nb\n")
    for name, text in lines.items():
        Image.new("RGB", size, (30, 30, 30)).save(folder / "images" / f"{name}.png")
        (folder / "labels" / f"{name}.txt").write_text(text)
    return folder


def _reasons(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s["path"]: s["reason"] for s in result.skipped_samples}


def test_unknown_classes_outside_boxes_and_empty_images_are_counted_with_reasons(
    tmp_path: Path,
) -> None:
    folder = _yolo_folder(
        tmp_path / "in",
        {
            "good": "0 0.5 0.5 0.25 0.25\n1 0.2 0.2 0.1 0.1\n",
            "unknown": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n",
            "outside": "1 0.5 0.5 0.2 0.2\n0 1.5 1.5 0.2 0.2\n",
            "empty": "",
            "flat": "0 0.5 0.5 0.0 0.3\n",
        },
    )
    (folder / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    Image.new("RGB", (64, 48)).save(folder / "images" / "unlabelled.png")
    result = _import(folder, tmp_path / "out", val_pct=0.0)
    reasons = _reasons(result)
    assert reasons["images/unknown.png (line 2)"] == "unknown class number 7 (2 classes listed)"
    assert reasons["images/outside.png (box 2, a)"] == "box outside the 64x48 image"
    assert reasons["images/empty.png"] == "no usable boxes in this image"
    assert reasons["images/flat.png (box 1, a)"].startswith("empty or inverted box")
    assert reasons["images/flat.png"] == "no usable boxes in this image"
    assert reasons["labels/orphan.txt"] == "annotation file without an image"
    assert reasons["images/unlabelled.png"] == "no YOLO annotation file for this image"
    assert result.skipped == 7
    assert result.split_images == {"train": 3}
    assert result.counts["train"] == [2, 2]  # a: good, unknown; b: good, outside

    # a class list in the request keeps only its classes, and says which boxes it left out
    kept = _import(folder, tmp_path / "only-b", classes=["b"], val_pct=0.0)
    assert _reasons(kept)["images/good.png (box 1, a)"] == "unknown class 'a'"
    assert kept.counts["train"] == [2]


def test_an_xml_entity_bomb_is_refused_and_its_image_listed(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shapes.write_voc(folder, SAMPLES[:4])
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + "]><annotation><object><name>&lol9;</name></object></annotation>"
    )
    (folder / "Annotations" / "img0000.xml").write_text(bomb)
    (folder / "Annotations" / "img0001.xml").write_text("<annotation><object>")
    result = _import(folder, tmp_path / "out", val_pct=0.0)
    reasons = _reasons(result)
    assert reasons["Annotations/img0000.xml"].startswith("refused: XML with a DTD or entities")
    assert reasons["Annotations/img0001.xml"].startswith("not valid XML")
    assert result.split_images == {"train": 2}


def test_nan_and_huge_coordinates_are_skipped_boxes_and_a_1_gb_json_a_clear_error(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    shapes.write_coco(folder, SAMPLES[:3])
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"][0]["bbox"] = [float("nan"), 1, 5, 5]
    doc["annotations"][1]["bbox"] = [1, 1, 1e400, 5]
    doc["annotations"][2]["bbox"] = [1, 1, "wide", 5]
    (folder / "annotations.json").write_text(json.dumps(doc))  # NaN and Infinity literals
    result = _import(folder, tmp_path / "out", val_pct=0.0)
    reasons = [s["reason"] for s in result.skipped_samples]
    assert reasons.count("box with a coordinate that is not a finite number") == 2
    assert "a coordinate is not a number ('wide')" in reasons

    big = tmp_path / "big"
    shapes.write_coco(big, SAMPLES[:1])
    with open(big / "annotations.json", "r+b") as fh:  # sparse: 1 GiB on paper, no disk
        fh.truncate(1 << 30)
    with pytest.raises(DatasetImportError, match="COCO: COCO file too large"):
        _import(big, tmp_path / "big-out")
    assert not (tmp_path / "big-out" / "meta.json").exists()


def test_segmentation_masks_are_resized_by_nearest_and_bad_pairs_listed(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shapes.write_masks(folder, SAMPLES[:8])
    Image.new("P", (50, 50)).save(folder / "masks" / "img0001.png")  # wrong size
    (folder / "masks" / "img0002.png").unlink()  # an image without its mask
    Image.new("P", (96, 80)).save(folder / "masks" / "stray.png")  # a mask without an image
    result = _import(
        folder,
        tmp_path / "out",
        task="segmentation",
        resize_mode="fill",
        width=64,
        height=64,
        val_pct=0.0,
    )
    reasons = _reasons(result)
    assert reasons["masks/img0001.png"] == "mask is 50x50, its image 96x80"
    assert reasons["images/img0002.png"] == "no mask for this image"
    assert reasons["masks/stray.png"] == "mask without an image"
    assert result.classes == ["background", *shapes.CLASSES]
    masks = np.load(tmp_path / "out" / "train_masks.npy")
    assert masks.shape == (6, 64, 64)
    # fill pads 96x80 -> 64x54 with 5 rows of noise above and below: those are ignored
    assert (masks[:, :5] == 255).all()
    assert (masks[:, -5:] == 255).all()
    assert set(np.unique(masks[:, 5:-5])) <= {0, 1, 2, 3}  # nearest: no blended classes
    kept = [s for i, s in enumerate(SAMPLES[:8]) if i not in (1, 2)]
    expected = images.resize_mask(kept[0].mask, 64, 64, "fill")
    assert (masks[0] == expected).all()
    assert sum(result.counts["train"]) == int((masks != 255).sum())


def test_odd_coco_ids_odd_xml_encodings_and_twin_files_are_skips_not_crashes(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "coco"
    shapes.write_coco(folder, SAMPLES[:3])
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"][0]["category_id"] = [1]  # unhashable: dict.get would raise TypeError
    doc["annotations"][1]["image_id"] = {"id": 0}
    doc["annotations"].append({"id": 99, "image_id": 12345, "category_id": 1, "bbox": [1, 1, 5, 5]})
    (folder / "annotations.json").write_text(json.dumps(doc))
    reasons = _reasons(_import(folder, tmp_path / "coco-out", val_pct=0.0))
    assert reasons["images/img0000.png (annotation 0)"] == "unknown category id [1]"
    assert reasons["annotation 1"] == "image_id {'id': 0} is not an image of the file"
    assert reasons["annotation 99"] == "image_id 12345 is not an image of the file"
    doc["images"][0]["id"] = True  # a bool is no id
    (folder / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetImportError, match="every image needs an integer id"):
        _import(folder, tmp_path / "coco-bool")

    voc = tmp_path / "voc"
    shapes.write_voc(voc, SAMPLES[:3])
    (voc / "Annotations" / "img0000.xml").write_text(
        '<?xml version="1.0" encoding="x-no-such-codec"?><annotation/>'
    )
    SAMPLES[1].image.save(voc / "JPEGImages" / "img0001.bmp")  # a twin of img0001.png
    reasons = _reasons(_import(voc, tmp_path / "voc-out", val_pct=0.0))
    assert reasons["Annotations/img0000.xml"].startswith("not valid XML")
    assert reasons["JPEGImages/img0001.png"].startswith("another file is also img0001")


def test_colour_masks_map_through_colors_txt_and_a_test_folder_still_carves_val(
    tmp_path: Path,
) -> None:
    colours = [(0, 0, 0), (250, 0, 0), (0, 250, 0), (0, 0, 250)]
    folder = tmp_path / "seg"
    shapes.write_masks(folder, SAMPLES[:8])
    (folder / "colors.txt").write_text("".join(f"{r} {g} {b}\n" for r, g, b in colours))
    for i, s in enumerate(SAMPLES[:8]):
        rgb = np.asarray(colours, dtype=np.uint8)[s.mask]
        Image.fromarray(rgb, "RGB").save(folder / "masks" / f"img{i:04d}.png")
    test = tmp_path / "seg-test"
    shapes.write_masks(test, SAMPLES[8:10])
    (test / "colors.txt").write_text((folder / "colors.txt").read_text())
    result = import_annotated(
        Source(kind="folder", root=folder),
        ImportOptions(width=96, height=80, val_pct=25.0, seed=5),
        AnnotatedOptions("segmentation"),
        tmp_path / "out",
        test=Source(kind="folder", root=test),
    )
    assert result.split_images == {"train": 6, "val": 2, "test": 2}
    masks = np.load(tmp_path / "out" / "train_masks.npy")
    originals = {s.mask.tobytes() for s in SAMPLES[:8]}
    assert all(m.tobytes() in originals for m in masks)  # same size: the classes exactly
    present = np.load(tmp_path / "out" / "train_mask_classes.npy")
    assert (present[:, 0]).all()
    assert present.shape == (6, 255)
    (folder / "colors.txt").write_text("1 2 3\n" * 300)
    with pytest.raises(DatasetImportError, match="more than 255 colours"):
        _import(folder, tmp_path / "too-many", task="segmentation")
