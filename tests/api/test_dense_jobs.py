"""Detection and segmentation jobs through the API and a real worker (PostgreSQL, Redis,
Celery, torch): training with the task's metrics, a training child killed mid-run resuming
with one metric point per step, predictions, and what is refused."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import tarfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import shapes
from tests.api.test_cli import run
from tests.support import LENET, Stack, post_dataset, training_child, wait_for, zip_folder

SIZE = 48
SAMPLES = shapes.render(32, SIZE, SIZE, seed=21)


def _upload(stack: Stack, tmp_path: Path, name: str, task: str) -> dict:
    folder = tmp_path / name
    (shapes.write_voc if task == "detection" else shapes.write_masks)(folder, SAMPLES)
    archive = zip_folder(folder, tmp_path / f"{name}.zip", prefix=f"{name}/")
    with stack.client() as client:
        resp = post_dataset(
            client,
            {
                "name": name,
                "task": task,
                "image_width": SIZE,
                "image_height": SIZE,
                "val_pct": 25,
                "seed": 2,
            },
            {"archive": (archive.name, archive.read_bytes())},
        )
        assert resp.status_code == 202, resp.text
        ds = wait_for(client, f"/datasets/{resp.json()['id']}", timeout=120)
    assert ds["status"] == "done", ds["error"]
    return ds


@pytest.fixture(scope="module")
def boxes(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _upload(pg_stack, tmp_path_factory.mktemp("det"), "dense-voc", "detection")


@pytest.fixture(scope="module")
def masks(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _upload(pg_stack, tmp_path_factory.mktemp("seg"), "dense-seg", "segmentation")


def _job(client: httpx.Client, dataset: dict, network: str, **hyper: Any) -> httpx.Response:
    return client.post(
        "/jobs",
        json={
            "dataset_id": dataset["id"],
            "name": f"{network} on {dataset['name']}",
            "network": network,
            "recipe": "recommended",
            "hyperparameters": {"batch_size": 4, "seed": 3, **hyper},
        },
    )


def _points(client: httpx.Client, job_id: str, names: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/metrics", params={"names": names}).json()["items"]


def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def _upload_image(i: int, scale: int = 2) -> tuple[str, bytes, str]:
    """A held-out image at twice the training size (boxes must come back in its pixels)."""
    img = SAMPLES[i].image.resize((SIZE * scale, SIZE * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return (f"held-{i}.png", buf.getvalue(), "image/png")


def test_a_detector_killed_mid_training_resumes_and_predicts_boxes(
    pg_stack: Stack, boxes: dict, tmp_path: Path
) -> None:
    epochs = 5
    with pg_stack.client() as client:
        resp = _job(client, boxes, "fcos_resnet18_fpn", epochs=epochs, log_interval=1)
        assert resp.status_code == 202, resp.text
        job = resp.json()["jobs"][0]
        # left at classification's defaults, the job follows its own task's metric
        assert job["request"]["hyperparameters"]["best_metric"] == "val.map"
        assert job["request"]["task"] == "detection"
        job_id = job["id"]
        deadline = time.monotonic() + 180
        while not any(
            c["name"] == "epoch-1" for c in client.get(f"/jobs/{job_id}/checkpoints").json()
        ):
            assert time.monotonic() < deadline, client.get(f"/jobs/{job_id}").json()
            time.sleep(0.2)
        worker = next(w for w in client.get("/workers").json() if w["name"] == "train-test-1")
        training_child(worker["pid"], job_id).send_signal(signal.SIGKILL)
        final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        assert final["status"] == "done", final["error"]
        assert final["attempts"] == 2
        train = [p["step"] for p in _points(client, job_id, "train.loss")]
        assert train == list(range(1, final["total_steps"] + 1)), "one point per step"
        val = _points(client, job_id, "val.map,val.map_50,val.map_75")
        assert sorted({p["epoch"] for p in val}) == [float(e) for e in range(1, epochs + 1)]
        assert all(0.0 <= p["value"] <= 1.0 for p in val)
        per_class = {p["name"] for p in _points(client, job_id, "")} & {
            f"val.ap.{c}" for c in shapes.CLASSES
        }
        assert per_class, "per-class AP series"
        assert "val.map" in final["best"]

        held = [_upload_image(i) for i in (0, 1)] + [("bad.png", b"not an image", "image/png")]
        resp = client.post(
            f"/jobs/{job_id}/predict",
            data={"threshold": "0.05"},
            files=[("images", f) for f in held],
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["task"] == "detection"
        assert body["threshold"] == 0.05
        assert body["classes"] == sorted(shapes.CLASSES)
        first, _second, bad = body["predictions"]
        assert "error" in bad
        assert bad["boxes"] is None
        assert (first["width"], first["height"]) == (2 * SIZE, 2 * SIZE)
        for box in first["boxes"]:
            assert box["score"] >= 0.05
            assert box["label"] in shapes.CLASSES
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 <= x1 <= 2 * SIZE
            assert 0 <= y0 <= y1 <= 2 * SIZE
            assert box["box"] == pytest.approx([2 * v for v in box["stored_box"]], abs=0.02)
        assert _png(first["overlay_png"]).shape[:2] == (SIZE, SIZE)
        # what only classifiers do yet is refused with the route to use
        for method, path, kwargs in (
            ("POST", f"/jobs/{job_id}/classify", {"files": [("images", held[0])]}),
            ("POST", f"/jobs/{job_id}/explain", {"files": [("images", held[0])]}),
            ("POST", f"/jobs/{job_id}/pretrained", {"json": {}}),
        ):
            refused = client.request(method, path, **kwargs)
            assert refused.status_code == 400, (path, refused.text)
            assert refused.json()["code"] == "unsupported_task"
            assert "predict" in refused.json()["detail"]
        for export in ("onnx-int8", "onnx-fp16", "torchscript"):
            refused = client.get(f"/jobs/{job_id}/download", params={"export": export})
            assert refused.status_code == 400, refused.text
            assert refused.json()["code"] == "unsupported_task"
            assert "exports onnx" in refused.json()["detail"]
        archive = client.post(
            f"/jobs/{job_id}/evaluate", files={"archive": ("a.zip", b"PK", "application/zip")}
        )
        assert archive.status_code == 400, archive.text
        assert "archive" in archive.json()["detail"]
        evaluation = client.post(f"/jobs/{job_id}/evaluate", data={"split": "val"})
        assert evaluation.status_code == 202, evaluation.text
        done = wait_for(client, f"/jobs/{evaluation.json()['id']}", timeout=120)
        assert done["status"] == "done", done["error"]
        results = client.get(f"/jobs/{done['id']}/results").json()
        assert results["task"] == "detection"
        assert results["images"] == boxes["splits"]["val"]["images"]
        # the validation's figure at that checkpoint, measured again by another process
        best = final["best"]["val.map"]["value"]
        assert results["metrics"]["map"] == pytest.approx(best, abs=0.02)
        rows = {r["label"]: r for r in results["per_class"]}
        assert sum(r["objects"] for r in rows.values()) == sum(
            boxes["splits"]["val"]["per_class"].values()
        )
        for row in rows.values():
            if row["pr_curve"] is not None:
                assert len(row["pr_curve"]["recall"]) == len(row["pr_curve"]["precision"]) == 101
        plain = client.get(f"/jobs/{job_id}/download")
        assert plain.status_code == 200, plain.text
        with tarfile.open(fileobj=io.BytesIO(plain.content)) as tar:
            assert sorted(tar.getnames()) == ["info.json", "labels.txt", "weights.safetensors"]
            info = json.load(tar.extractfile("info.json"))  # type: ignore[arg-type]
        assert (info["task"], info["network"]["name"]) == ("detection", "fcos_resnet18_fpn")
        assert info["classes"] == sorted(shapes.CLASSES)
        assert info["num_classes"] == len(shapes.CLASSES) + 1
        _onnx_finds_the_predicted_boxes(client, job_id)
        _held_out_archives(client, job_id, tmp_path, final["best"]["val.map"]["value"])


HELD = shapes.render(8, SIZE, SIZE, seed=77)  # never imported


def _held_out_archives(client: httpx.Client, job_id: str, tmp_path: Path, best: float) -> None:
    """An archive of held-out images is a prediction job whose rows are the interactive
    ones; a labelled one (VOC, plus a box of a class the model does not know) evaluates."""
    folder = tmp_path / "held"
    shapes.write_voc(folder, HELD)
    voc = next(f for f in sorted((folder / "Annotations").iterdir()) if "circle" in f.read_text())
    voc.write_text(voc.read_text().replace("<name>circle</name>", "<name>hexagon</name>", 1))
    archive = zip_folder(folder, tmp_path / "held.zip")
    resp = client.post(
        f"/jobs/{job_id}/predict",
        data={"threshold": "0.3"},
        files={"archive": ("held.zip", archive.read_bytes(), "application/zip")},
    )
    assert resp.status_code == 202, resp.text
    job = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=120)
    assert job["status"] == "done", job["error"]
    assert job["last"]["inference.images"]["value"] == len(HELD)
    page = client.get(f"/jobs/{job['id']}/results", params={"per_page": 5}).json()
    assert (page["task"], page["total"], len(page["items"]), page["threshold"]) == (
        "detection",
        len(HELD),
        5,
        0.3,
    )
    first = page["items"][0]
    assert first["overlay_png"] is None
    name = first["filename"].rsplit("/", 1)[-1]
    png = (folder / "JPEGImages" / name).read_bytes()
    direct = client.post(
        f"/jobs/{job_id}/predict", data={"threshold": "0.3"}, files=[("images", (name, png))]
    ).json()["predictions"][0]
    assert first["boxes"] == direct["boxes"]
    lines = client.get(f"/jobs/{job['id']}/results", params={"format": "csv"}).text.splitlines()
    assert lines[0] == "filename,label,score,x0,y0,x1,y1,error"
    total_boxes = int(job["last"]["inference.boxes"]["value"])
    assert len(lines) - 1 >= total_boxes > 0
    resp = client.post(
        f"/jobs/{job_id}/evaluate",
        files={"archive": ("held.zip", archive.read_bytes(), "application/zip")},
    )
    assert resp.status_code == 202, resp.text
    done = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=120)
    assert done["status"] == "done", done["error"]
    results = client.get(f"/jobs/{done['id']}/results").json()
    assert (results["images"], results["dataset_id"]) == (len(HELD), None)
    assert results["skipped"] >= 1
    assert any("hexagon" in s["reason"] for s in results["skipped_samples"])
    # objects never seen are found about as well as the validation's
    assert results["metrics"]["map"] > best - 0.3


def _onnx_finds_the_predicted_boxes(client: httpx.Client, job_id: str) -> None:
    """The ONNX export (NMS and all inside) gives the boxes predict gives, in onnxruntime."""
    import onnxruntime as ort

    resp = client.get(f"/jobs/{job_id}/download", params={"export": "onnx"})
    assert resp.status_code == 200, resp.text
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        assert "model.onnx" in tar.getnames()
        info = json.load(tar.extractfile("info.json"))  # type: ignore[arg-type]
        model = tar.extractfile("model.onnx").read()  # type: ignore[union-attr]
    assert info["exports"] == {"onnx": "model.onnx"}
    assert set(info["export_io"]["outputs"]) == {"boxes", "scores", "labels"}
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    found = 0
    for i in (0, 1, 2):
        name, png, mime = _upload_image(i, 1)
        pred = client.post(
            f"/jobs/{job_id}/predict",
            data={"threshold": "0.3"},
            files=[("images", (name, png, mime))],
        ).json()["predictions"][0]["boxes"]
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        boxes, scores, labels = session.run(None, {"image": image})
        kept = scores >= 0.3
        assert len(pred) == int(kept.sum()), (pred, scores)
        for want, box, score, label in zip(
            pred, boxes[kept], scores[kept], labels[kept], strict=True
        ):
            assert want["class_id"] == int(label)
            assert want["score"] == pytest.approx(float(score), abs=1e-3)
            assert want["stored_box"] == pytest.approx(box.tolist(), abs=0.05)
        found += len(pred)
    assert found > 0, "the trained detector finds objects in three images"


def test_a_segmenter_trains_with_iou_and_predicts_masks(
    pg_stack: Stack, masks: dict, tmp_path: Path
) -> None:
    with pg_stack.client() as client:
        resp = _job(client, masks, "lraspp_mobilenet_v3_large", epochs=2)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["jobs"][0]["id"]
        final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        assert final["status"] == "done", final["error"]
        names = {p["name"] for p in _points(client, job_id, "")}
        assert {"val.miou", "val.pixel_accuracy", "val.loss", "val.iou.background"} <= names
        miou = _points(client, job_id, "val.miou")
        assert [p["epoch"] for p in miou] == [1.0, 2.0]
        assert final["best"]["val.miou"]["value"] == max(p["value"] for p in miou)
        evaluation = client.post(f"/jobs/{job_id}/evaluate", data={"split": "val"})
        assert evaluation.status_code == 202, evaluation.text
        done = wait_for(client, f"/jobs/{evaluation.json()['id']}", timeout=120)
        assert done["status"] == "done", done["error"]
        results = client.get(f"/jobs/{done['id']}/results").json()
        assert results["metrics"]["miou"] == pytest.approx(
            final["best"]["val.miou"]["value"], abs=0.005
        )
        matrix = np.array(results["confusion_matrix"])
        assert matrix.shape == (len(masks["classes"]),) * 2
        assert [r["pixels"] for r in results["per_class"]] == matrix.sum(axis=1).tolist()
        resp = client.post(f"/jobs/{job_id}/predict", files=[("images", _upload_image(2, 1))])
        assert resp.status_code == 200, resp.text
        (pred,) = resp.json()["predictions"]
        mask = _png(pred["mask_png"])
        assert mask.shape == (SIZE, SIZE)
        assert int(mask.max()) < len(masks["classes"])
        assert sum(a["pixels"] for a in pred["areas"]) == SIZE * SIZE
        assert sum(a["fraction"] for a in pred["areas"]) == pytest.approx(1.0, abs=1e-3)
        _exports_give_the_predicted_mask(client, job_id, mask, len(masks["classes"]))
        # the held-out masks as an archive: a prediction job, and an evaluation
        folder = tmp_path / "held"
        shapes.write_masks(folder, HELD)
        archive = zip_folder(folder, tmp_path / "held.zip").read_bytes()
        resp = client.post(
            f"/jobs/{job_id}/predict", files={"archive": ("h.zip", archive, "application/zip")}
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=120)
        assert job["status"] == "done", job["error"]
        rows = client.get(f"/jobs/{job['id']}/results").json()["items"]
        images_ = [r for r in rows if r["filename"].startswith("images/")]
        assert len(images_) == len(HELD)
        for row in images_:
            assert _png(row["mask_png"]).shape == (SIZE, SIZE)
            assert sum(a["pixels"] for a in row["areas"]) == SIZE * SIZE
        csv_text = client.get(f"/jobs/{job['id']}/results", params={"format": "csv"}).text
        assert csv_text.splitlines()[0] == "filename,label,pixels,fraction,error"
        resp = client.post(
            f"/jobs/{job_id}/evaluate", files={"archive": ("h.zip", archive, "application/zip")}
        )
        done = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=120)
        assert done["status"] == "done", done["error"]
        results = client.get(f"/jobs/{done['id']}/results").json()
        assert results["images"] == len(HELD)
        assert 0 < results["metrics"]["miou"] <= 1
    # the same through the CLI, with the drawing saved
    image = tmp_path / "held.png"
    image.write_bytes(_upload_image(2, 1)[1])
    result = run(pg_stack, "predict", job_id, str(image), "--save-overlays", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    queued = run(pg_stack, "predict", job_id, "--archive", str(tmp_path / "held.zip"))
    assert queued.returncode == 0, queued.stderr
    assert "prediction job" in queued.stdout
    assert "% of the image" in result.stdout
    with Image.open(tmp_path / "o" / "held.png") as drawn:
        assert drawn.size == (SIZE, SIZE)


def _exports_give_the_predicted_mask(
    client: httpx.Client, job_id: str, mask: np.ndarray, classes: int
) -> None:
    """ONNX (onnxruntime) and TorchScript exports of the segmenter give predict's mask."""
    import onnxruntime as ort
    import torch

    resp = client.get(f"/jobs/{job_id}/download", params={"export": "onnx,torchscript"})
    assert resp.status_code == 200, resp.text
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        info = json.load(tar.extractfile("info.json"))  # type: ignore[arg-type]
        onnx = tar.extractfile("model.onnx").read()  # type: ignore[union-attr]
        script = tar.extractfile("model.torchscript.pt").read()  # type: ignore[union-attr]
    assert info["exports"] == {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
    image = np.asarray(Image.open(io.BytesIO(_upload_image(2, 1)[1])).convert("RGB"))[None]
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    out_mask, probs = session.run(None, {"images": np.concatenate([image, image])})
    assert out_mask.shape == (2, SIZE, SIZE)
    assert probs.shape == (2, classes, SIZE, SIZE)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # argmax ties between float paths may flip a handful of border pixels
    assert (out_mask[0] == mask).mean() > 0.995
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still what users run
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.load(io.BytesIO(script))
    ts_mask, _ = traced(torch.from_numpy(image.copy()))
    assert (ts_mask[0].numpy() == mask).mean() > 0.995


@pytest.mark.parametrize(
    ("network", "hyper", "code", "words"),
    [
        ("lenet", {}, "network_task_mismatch", "fcos_resnet18_fpn"),
        ("fcos_resnet18_fpn", {"crop_size": 32}, "invalid_hyperparameters", "aug_scale"),
        ("fcos_resnet18_fpn", {"aug_rot": 10}, "invalid_hyperparameters", "aug_rot"),
        ("fcos_resnet18_fpn", {"best_metric": "val.miou"}, "invalid_hyperparameters", "val.map"),
        (
            "fcos_resnet18_fpn",
            {"early_stopping": {"metric": "val.top5"}},
            "invalid_hyperparameters",
            "early_stopping.metric",
        ),
        ("lraspp_mobilenet_v3_large", {}, "network_task_mismatch", "segmentation network"),
    ],
)
def test_jobs_that_do_not_fit_a_detection_dataset_are_refused(
    pg_stack: Stack, boxes: dict, network: str, hyper: dict, code: str, words: str
) -> None:
    with pg_stack.client() as client:
        before = client.get("/jobs").json()["total"]
        resp = _job(client, boxes, network, **hyper)
        assert resp.status_code == 400, resp.text
        assert resp.json()["code"] == code
        assert words in resp.json()["detail"]
        assert client.get("/jobs").json()["total"] == before


def test_detection_networks_on_a_classification_dataset_and_studies_are_refused(
    pg_stack: Stack, boxes: dict, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        resp = _job(client, digits_dataset, "fcos_resnet18_fpn")
        assert resp.status_code == 400
        assert resp.json()["code"] == "network_task_mismatch"
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": digits_dataset["id"],
                "name": "map on digits",
                "network": "lenet",
                "hyperparameters": {**LENET, "best_metric": "val.map"},
            },
        )
        assert resp.status_code == 400
        assert "val.accuracy" in resp.json()["detail"]
        study = client.post(
            "/studies",
            json={
                "dataset_id": boxes["id"],
                "name": "s",
                "network": "fcos_resnet18_fpn",
                "search_space": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
                },
            },
        )
        assert study.status_code == 400, study.text
        assert study.json()["code"] == "unsupported_task"
        # nor does a study tune a detector on a classification dataset
        study = client.post(
            "/studies",
            json={
                "dataset_id": digits_dataset["id"],
                "name": "s",
                "network": "fcos_resnet18_fpn",
                "search_space": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
                },
            },
        )
        assert study.status_code == 400, study.text
        assert "studies tune classification" in study.json()["detail"]


def test_a_backbone_must_come_from_a_classifier_of_the_backbones_network(
    pg_stack: Stack, boxes: dict, lenet_job: dict, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        cases = [
            (
                {"name": "fcos_resnet18_fpn", "backbone_job_id": lenet_job["job"]["id"]},
                boxes,
                "invalid_backbone",
                "backbone is resnet18",
            ),
            (
                {"name": "fcos_resnet18_fpn", "backbone_job_id": str(uuid.uuid4())},
                boxes,
                "job_not_found",
                "does not exist",
            ),
            (
                {
                    "name": "ssdlite320_mobilenet_v3_large",
                    "backbone_job_id": lenet_job["job"]["id"],
                },
                boxes,
                "invalid_backbone",
                "cannot start from a classification model",
            ),
            (
                {"name": "lenet", "backbone_job_id": lenet_job["job"]["id"]},
                digits_dataset,
                "invalid_backbone",
                "classification network",
            ),
        ]
        for network, dataset, code, words in cases:
            resp = client.post(
                "/jobs",
                json={
                    "dataset_id": dataset["id"],
                    "name": "backbone",
                    "network": {"kind": "standard", **network},
                    "hyperparameters": {"epochs": 1},
                },
            )
            assert resp.status_code in (400, 404), resp.text
            assert resp.json()["code"] == code, resp.text
            assert words in resp.json()["detail"]
        # a classifier fine-tuned into a detector is refused with the task named
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": boxes["id"],
                "name": "previous",
                "network": {"kind": "previous", "job_id": lenet_job["job"]["id"]},
            },
        )
        assert resp.status_code == 400
        assert resp.json()["code"] == "network_task_mismatch"
        # an unknown previous job is a 404, not a guess at its task
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": boxes["id"],
                "name": "previous",
                "network": {"kind": "previous", "job_id": str(uuid.uuid4())},
            },
        )
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == "job_not_found"


def test_a_backbone_from_a_classification_job_or_its_uploaded_model(
    pg_stack: Stack, boxes: dict, lenet_job: dict, digits_dataset: dict
) -> None:
    """A ResNet-18 trained on the digits gives FCOS its backbone, as a job and as the
    pretrained model made from it; a LeNet model, an unknown one, or both at once are refused."""
    with pg_stack.client() as client:
        resp = _job(client, digits_dataset, "resnet18", epochs=1, batch_size=128)
        assert resp.status_code == 202, resp.text
        resnet = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=300)
        assert resnet["status"] == "done", resnet["error"]
        made = client.post(f"/jobs/{resnet['id']}/pretrained", json={"name": "resnet18-digits"})
        assert made.status_code == 201, made.text
        lenet = client.post(f"/jobs/{lenet_job['job']['id']}/pretrained", json={})
        assert lenet.status_code == 201, lenet.text
        for backbone, code in (
            ({"backbone_model_id": lenet.json()["id"]}, "invalid_backbone"),
            ({"backbone_model_id": str(uuid.uuid4())}, "pretrained_model_not_found"),
            (
                {"backbone_model_id": made.json()["id"], "backbone_job_id": resnet["id"]},
                "validation_error",
            ),
        ):
            network = {"kind": "standard", "name": "fcos_resnet18_fpn", **backbone}
            refused = client.post(
                "/jobs", json={"dataset_id": boxes["id"], "name": "b", "network": network}
            )
            assert refused.status_code in (400, 404, 422), refused.text
            assert refused.json()["code"] == code, refused.text
        ids = []
        for backbone in (
            {"backbone_job_id": resnet["id"]},
            {"backbone_model_id": made.json()["id"]},
        ):
            network = {"kind": "standard", "name": "fcos_resnet18_fpn", **backbone}
            resp = client.post(
                "/jobs",
                json={
                    "dataset_id": boxes["id"],
                    "name": "fcos from resnet18",
                    "network": network,
                    "recipe": "recommended",
                    "hyperparameters": {"epochs": 1, "batch_size": 8},
                },
            )
            assert resp.status_code == 202, resp.text
            assert resp.json()["jobs"][0]["request"]["network"] == network
            ids.append(resp.json()["jobs"][0]["id"])
        for job_id in ids:
            final = wait_for(client, f"/jobs/{job_id}", timeout=300)
            assert final["status"] == "done", final["error"]
            log = client.get(f"/jobs/{job_id}/logs").text
            # all of ResNet-18 but its grey first convolution and its classifier
            found = re.search(r"backbone initialised from \S+: (\d+) tensors loaded", log)
            assert found, log[-2000:]
            assert int(found.group(1)) > 50, found.group(0)


def test_the_catalog_names_each_networks_task(pg_stack: Stack) -> None:
    with pg_stack.client() as client:
        rows = {n["name"]: n for n in client.get("/networks").json()}
    assert rows["fcos_resnet18_fpn"]["task"] == "detection"
    assert rows["lraspp_mobilenet_v3_large"]["task"] == "segmentation"
    assert rows["lenet"]["task"] == "classification"
    assert rows["fcos_resnet18_fpn"]["recommended"]["solver"] == "adamw"
    # and what each exports: Faster R-CNN and SSDlite only their weights
    assert rows["fcos_resnet18_fpn"]["exports"] == ["onnx"]
    assert rows["fasterrcnn_mobilenet_v3_large_fpn"]["exports"] == []
    assert rows["ssdlite320_mobilenet_v3_large"]["exports"] == []
    assert rows["lraspp_mobilenet_v3_large"]["exports"] == ["onnx", "torchscript"]
    assert "onnx-int8" in rows["lenet"]["exports"]
    assert "onnx-int8" in rows["custom"]["exports"]
