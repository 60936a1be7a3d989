"""Detection and segmentation datasets through the API: upload, import by a real worker, the
dataset's counts, explore with boxes and masks drawn, and what is refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.overlays import PALETTE
from tests import shapes
from tests.support import LENET, Stack, post_dataset, wait_for, zip_folder

SAMPLES = shapes.render(16, 64, 48, seed=11)


def _upload(stack: Stack, tmp_path: Path, name: str, options: dict, folder: Path) -> dict:
    archive = zip_folder(folder, tmp_path / f"{name}.zip", prefix=f"{name}/")
    with stack.client() as client:
        resp = post_dataset(
            client,
            {"name": name, "image_width": 64, "image_height": 48, "seed": 1, **options},
            {"archive": (archive.name, archive.read_bytes())},
        )
        assert resp.status_code == 202, resp.text
        return wait_for(client, f"/datasets/{resp.json()['id']}", timeout=120)


def test_a_detection_archive_imports_and_explores_with_its_boxes(
    pg_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "voc"
    shapes.write_voc(folder, SAMPLES)
    ds = _upload(pg_stack, tmp_path, "shapes-voc", {"task": "detection"}, folder)
    assert ds["status"] == "done", ds["error"]
    assert (ds["task"], ds["annotation_format"], ds["count_unit"]) == ("detection", "voc", "boxes")
    assert ds["classes"] == sorted(shapes.CLASSES)
    assert ds["skipped"] == 0, ds["skipped_samples"]
    splits = ds["splits"]
    assert (splits["train"]["images"], splits["val"]["images"]) == (12, 4)
    boxes = sum(len(s.boxes) for s in SAMPLES)
    assert sum(sum(s["per_class"].values()) for s in splits.values()) == boxes
    circle = ds["classes"].index("circle")
    with pg_stack.client() as client:
        page = client.get(
            f"/datasets/{ds['id']}/samples", params={"split": "train", "label": circle}
        ).json()
        assert page["total"] == sum(
            1 for item in page["items"] if any(b["class_name"] == "circle" for b in item["boxes"])
        )
        assert page["total"] > 0
        item = page["items"][0]
        x0, _y0, x1, y1 = (round(v) for v in item["boxes"][0]["box"])
        drawn = client.get(item["annotated_url"], params={"scale": 2})
        assert drawn.status_code == 200
        assert drawn.headers["content-type"] == "image/png"
        rgb = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB"))
        assert rgb.shape == (96, 128, 3)
        colour = PALETTE[item["boxes"][0]["label"]]
        # the box's bottom edge (its top may carry the class name) is in its class's colour
        assert (rgb[2 * y1 - 1, 2 * x0 + 2 : 2 * x1 - 2] == colour).all()
        # a classifier cannot train on boxes: refused before anything is queued, naming the
        # networks that can
        refused = client.post(
            "/jobs",
            json={
                "dataset_id": ds["id"],
                "name": "j",
                "network": "lenet",
                "hyperparameters": LENET,
            },
        )
        assert refused.status_code == 400
        assert refused.json()["code"] == "network_task_mismatch"
        assert "fcos_resnet18_fpn" in refused.json()["detail"]


def test_a_segmentation_archive_imports_its_masks_and_draws_them(
    pg_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "masks"
    shapes.write_masks(folder, SAMPLES)
    Image.new("P", (10, 10)).save(folder / "masks" / "img0003.png")  # the wrong size
    ds = _upload(pg_stack, tmp_path, "shapes-seg", {"task": "segmentation"}, folder)
    assert ds["status"] == "done", ds["error"]
    assert (ds["task"], ds["count_unit"]) == ("segmentation", "pixels")
    assert ds["classes"] == ["background", *shapes.CLASSES]
    assert ds["skipped_samples"] == [
        {"path": "masks/img0003.png", "reason": "mask is 10x10, its image 64x48"}
    ]
    pixels = sum(sum(s["per_class"].values()) for s in ds["splits"].values())
    assert pixels == 15 * 64 * 48  # squash at the same size: every pixel has a class
    with pg_stack.client() as client:
        item = client.get(f"/datasets/{ds['id']}/samples").json()["items"][0]
        plain = np.asarray(Image.open(io.BytesIO(client.get(item["image_url"]).content)))
        drawn = client.get(item["annotated_url"])
        over = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB"))
        assert over.shape == plain.shape
        assert (over != plain).any(axis=2).sum() > 0  # the shapes are tinted
        classify = client.get(f"/datasets/{ds['id']}/samples/train/0/annotated")
        assert classify.status_code == 200


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"task": "classification", "class_names": "a,b"}, 422),
        ({"task": "segmentation", "annotation_format": "coco"}, 422),
        ({"task": "detection", "class_names": "a,,b"}, 422),
        ({"task": "tracking"}, 422),
    ],
)
def test_options_that_do_not_fit_the_task_are_refused(
    pg_stack: Stack, options: dict, code: int
) -> None:
    with pg_stack.client() as client:
        resp = post_dataset(
            client, {"name": "x", **options}, {"archive": ("a.zip", b"PK\x05\x06" + bytes(18))}
        )
        assert resp.status_code == code, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_a_detection_folder_without_annotations_fails_with_the_reason(
    pg_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "plain"
    (folder / "cats").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / "cats" / f"{i}.png")
    ds = _upload(pg_stack, tmp_path, "no-boxes", {"task": "detection"}, folder)
    assert ds["status"] == "error"
    assert ds["error"].startswith("no annotations found")


def test_a_drawing_larger_than_4096_pixels_a_side_is_refused(
    pg_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "big"
    shapes.write_yolo(folder, SAMPLES[:2])
    ds = _upload(
        pg_stack,
        tmp_path,
        "big",
        {"task": "detection", "image_width": 600, "image_height": 600, "val_pct": 0},
        folder,
    )
    assert ds["status"] == "done", ds["error"]
    with pg_stack.client() as client:
        url = f"/datasets/{ds['id']}/samples/train/0/annotated"
        refused = client.get(url, params={"scale": 8})  # 4800 px a side: ~70 MB to draw
        assert refused.status_code == 400
        assert refused.json()["code"] == "scale_too_large"
        assert client.get(url, params={"scale": 2}).status_code == 200
