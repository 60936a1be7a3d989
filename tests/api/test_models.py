"""Using trained models over HTTP: classify, evaluate, download/export, pretrained models."""

from __future__ import annotations

import io
import json
import tarfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import (
    Stack,
    digits_arrays,
    png_bytes,
    post_dataset,
    submit,
    wait_for,
    write_class_folders,
    zip_folder,
)


def _val_images(client: Any, dataset: dict, count: int) -> tuple[np.ndarray, list[bytes]]:
    """The first `count` stored validation images, as arrays and as the PNGs the API serves."""
    page = client.get(
        f"/datasets/{dataset['id']}/samples", params={"split": "val", "per_page": count}
    ).json()
    pngs = [client.get(item["image_url"]).content for item in page["items"]]
    arrays = np.stack([np.asarray(Image.open(io.BytesIO(p)))[..., None] for p in pngs])
    return arrays, pngs


def _classify(client: Any, job_id: str, pngs: list[bytes], **data: Any) -> dict:
    files = [("images", (f"img{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    resp = client.post(
        f"/jobs/{job_id}/classify", files=files, data={k: str(v) for k, v in data.items()}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def _download(client: Any, job_id: str, tmp: Path, **params: str) -> Path:
    resp = client.get(f"/jobs/{job_id}/download", params=params, timeout=300)
    assert resp.status_code == 200, resp.text
    fmt = params.get("format", "tar.gz")
    path = tmp / f"model.{fmt}"
    path.write_bytes(resp.content)
    out = tmp / "unpacked"
    out.mkdir(exist_ok=True)
    if fmt == "zip":
        zipfile.ZipFile(path).extractall(out)
    else:
        with tarfile.open(path) as tf:
            tf.extractall(out, filter="data")
    return out


def test_download_holds_info_labels_weights_and_the_checkpoint_metrics(
    pg_stack: Stack, lenet_job: dict, tmp_path: Path
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        folder = _download(client, job["id"], tmp_path, checkpoint="last", format="zip")
    info = json.loads((folder / "info.json").read_text())
    assert info["network"] == {"kind": "standard", "name": "lenet"}
    assert info["input"]["width"] == 28
    assert info["input"]["channels"] == 1
    assert info["input"]["resize_mode"] == "squash"
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["framework"]["torch"]
    assert info["metrics"]["val.accuracy"] == pytest.approx(job["last"]["val.accuracy"]["value"])
    assert (folder / "labels.txt").read_text().split() == info["classes"]
    assert (folder / "weights.safetensors").read_bytes()[8:9] == b"{"
    assert np.load(folder / "mean.npy").shape == (1, 28, 28)


def test_torchscript_and_onnx_exports_agree_with_the_service(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict, tmp_path: Path
) -> None:
    import onnxruntime
    import torch

    job = lenet_job["job"]
    with pg_stack.client() as client:
        folder = _download(client, job["id"], tmp_path, export="torchscript,onnx")
        arrays, pngs = _val_images(client, digits_dataset, 64)
        service = []
        for start in range(0, len(pngs), 32):
            body = _classify(client, job["id"], pngs[start : start + 32], top_k=10)
            service += body["predictions"]
    probs_service = np.array(
        [[p["probability"] for p in sorted(r["top"], key=lambda t: t["index"])] for r in service]
    )
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still what users run
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    probs_ts = scripted(torch.from_numpy(arrays)).detach().numpy()
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    probs_onnx = session.run(None, {"images": arrays})[0]
    for probs in (probs_ts, probs_onnx):
        assert (probs.argmax(1) == probs_service.argmax(1)).all()
        assert np.abs(probs - probs_service).max() < 1e-4


def test_classify_an_rgb_jpeg_of_another_size_with_a_grayscale_model(
    pg_stack: Stack, lenet_job: dict
) -> None:
    images, labels = digits_arrays()
    digit = np.kron(images[0], np.ones((12, 9), dtype=np.uint8))  # 96x72, a 0
    rgb = np.stack([digit, digit // 2, digit], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    with pg_stack.client() as client:
        resp = client.post(
            f"/jobs/{lenet_job['job']['id']}/classify",
            files=[("images", ("zero.jpg", buf.getvalue(), "image/jpeg"))],
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
    top = body["predictions"][0]["top"]
    assert len(top) == 5
    assert top[0]["label"] == str(labels[0])
    assert body["checkpoint"] == "best"
    assert sum(t["probability"] for t in top) <= 1.0 + 1e-6


def test_evaluate_matches_the_validation_metric_of_the_checkpoint(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        resp = client.post(
            f"/jobs/{job['id']}/evaluate", data={"checkpoint": "last", "split": "val", "top_n": "3"}
        )
        assert resp.status_code == 202, resp.text
        evaluation = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=180)
        assert evaluation["status"] == "done", evaluation["error"]
        assert evaluation["kind"] == "evaluate"
        results = client.get(f"/jobs/{evaluation['id']}/results").json()
        top_url = results["top_images"]["3"][0]["image_url"]
        assert client.get(top_url.replace("/api/v1", "")).status_code == 200
    assert results["top1"] == pytest.approx(job["last"]["val.accuracy"]["value"], abs=1e-6)
    assert results["top5"] >= results["top1"]
    val_counts = digits_dataset["splits"]["val"]["per_class"]
    matrix = np.array(results["confusion_matrix"])
    assert [int(r) for r in matrix.sum(axis=1)] == [val_counts[c] for c in results["classes"]]
    assert len(results["top_images"]["3"]) == 3
    assert all(0 <= c["precision"] <= 1 for c in results["per_class"])


def test_evaluate_on_an_uploaded_labelled_archive(
    pg_stack: Stack, lenet_job: dict, tmp_path: Path
) -> None:
    images, labels = digits_arrays()
    folder = write_class_folders(tmp_path / "labelled", images[:200], labels[:200])
    archive = zip_folder(folder, tmp_path / "labelled.zip")
    with pg_stack.client() as client:
        resp = client.post(
            f"/jobs/{lenet_job['job']['id']}/evaluate",
            files={"archive": ("l.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        done = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=180)
        assert done["status"] == "done", done["error"]
        results = client.get(f"/jobs/{done['id']}/results").json()
    assert results["images"] == 200
    assert results["top1"] > 0.9


def test_many_images_make_an_inference_job_with_paged_and_csv_results(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        _, pngs = _val_images(client, digits_dataset, 40)
        files = [("images", (f"v{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
        resp = client.post(f"/jobs/{lenet_job['job']['id']}/classify", files=files)
        assert resp.status_code == 202, resp.text
        infer = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=180)
        assert infer["status"] == "done", infer["error"]
        page = client.get(f"/jobs/{infer['id']}/results", params={"per_page": 15}).json()
        assert page["total"] == 40
        assert len(page["items"]) == 15
        csv_text = client.get(f"/jobs/{infer['id']}/results", params={"format": "csv"}).text
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("filename,label1,probability1")
    assert len(lines) == 41


def test_interactive_classify_answers_while_training_holds_the_only_worker(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        _, pngs = _val_images(client, digits_dataset, 1)
        long = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "busy",
                "network": "lenet",
                "hyperparameters": {"epochs": 500},
            },
        )[0]
        wait_for(client, f"/jobs/{long['id']}", until=("running",), timeout=120)
        try:
            started = time.monotonic()
            body = _classify(client, lenet_job["job"]["id"], pngs)
            elapsed = time.monotonic() - started
            assert client.get(f"/jobs/{long['id']}").json()["status"] == "running"
        finally:
            client.post(f"/jobs/{long['id']}/abort")
    assert body["predictions"][0]["top"]
    assert elapsed < 10, f"classify took {elapsed:.1f}s behind a training job"


@pytest.fixture(scope="module")
def five_class_dataset(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    images, labels = digits_arrays()
    keep = labels < 5
    folder = write_class_folders(tmp_path_factory.mktemp("five") / "d", images[keep], labels[keep])
    archive = zip_folder(folder, tmp_path_factory.mktemp("fivez") / "five.zip")
    with pg_stack.client() as client:
        resp = post_dataset(
            client,
            {"name": "digits-0-4", "image_width": 28, "image_height": 28, "channels": 1},
            {"archive": ("five.zip", archive.read_bytes(), "application/zip")},
        )
        return wait_for(client, f"/datasets/{resp.json()['id']}")


def test_round_trip_download_upload_fine_tune_on_other_classes_and_classify(
    pg_stack: Stack, lenet_job: dict, five_class_dataset: dict, tmp_path: Path
) -> None:
    with pg_stack.client() as client:
        archive = client.get(f"/jobs/{lenet_job['job']['id']}/download").content
        up = client.post(
            "/pretrained-models",
            data={"name": "lenet-digits"},
            files={"archive": ("lenet.tar.gz", archive, "application/gzip")},
        )
        assert up.status_code == 201, up.text
        model = up.json()
        assert model["classes"] == [str(i) for i in range(10)]
        assert model["id"] in [m["id"] for m in client.get("/pretrained-models").json()]
        job = submit(
            client,
            {
                "dataset_id": five_class_dataset["id"],
                "name": "fine-tune-5",
                "network": {"kind": "pretrained", "model_id": model["id"]},
                "hyperparameters": {"epochs": 2, "learning_rate": 0.01},
            },
        )[0]
        final = wait_for(client, f"/jobs/{job['id']}", timeout=300)
        assert final["status"] == "done", final["error"]
        assert final["last"]["val.accuracy"]["value"] > 0.9
        _, pngs = _val_images(client, five_class_dataset, 4)
        body = _classify(client, job["id"], pngs, top_k=3)
        assert all(len(p["top"]) == 3 for p in body["predictions"])
        assert all(p["top"][0]["label"] in {"0", "1", "2", "3", "4"} for p in body["predictions"])
        # one call turns a job into a pretrained model; delete works
        converted = client.post(f"/jobs/{job['id']}/pretrained", json={"checkpoint": "last"})
        assert converted.status_code == 201, converted.text
        assert converted.json()["classes"] == ["0", "1", "2", "3", "4"]
        assert client.delete(f"/pretrained-models/{converted.json()['id']}").status_code == 204
        assert client.get(f"/pretrained-models/{converted.json()['id']}").status_code == 404


def _upload(client: Any, **files: tuple[str, bytes, str]) -> Any:
    return client.post("/pretrained-models", files=files)


def test_a_pickle_checkpoint_is_refused(pg_stack: Stack, tmp_path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}}, buf)
    with pg_stack.client() as client:
        resp = _upload(
            client,
            weights=("model.pt", buf.getvalue(), "application/octet-stream"),
            info=("info.json", b'{"format": "x"}', "application/json"),
        )
        assert resp.status_code == 400
        assert resp.json()["code"] == "pickle_refused"
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w:gz") as tf:
            info = tarfile.TarInfo("snapshot.pth")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
        resp = _upload(client, archive=("m.tar.gz", tar.getvalue(), "application/gzip"))
        assert resp.status_code == 400
        assert resp.json()["code"] == "pickle_refused"


def test_a_truncated_archive_is_refused(pg_stack: Stack, lenet_job: dict) -> None:
    with pg_stack.client() as client:
        archive = client.get(f"/jobs/{lenet_job['job']['id']}/download").content
        resp = _upload(
            client, archive=("m.tar.gz", archive[: len(archive) // 2], "application/gzip")
        )
    assert resp.status_code == 400
    assert resp.json()["code"] == "corrupt_archive"


def test_info_json_with_missing_keys_is_refused(
    pg_stack: Stack, lenet_job: dict, tmp_path: Path
) -> None:
    with pg_stack.client() as client:
        folder = _download(client, lenet_job["job"]["id"], tmp_path)
        info = json.loads((folder / "info.json").read_text())
        del info["classes"]
        resp = _upload(
            client,
            weights=("weights.safetensors", (folder / "weights.safetensors").read_bytes(), "a/b"),
            info=("info.json", json.dumps(info).encode(), "application/json"),
        )
    assert resp.status_code == 400
    assert "classes" in resp.json()["detail"]


def test_weights_that_do_not_fit_the_network_are_refused(
    pg_stack: Stack, lenet_job: dict, tmp_path: Path
) -> None:
    with pg_stack.client() as client:
        folder = _download(client, lenet_job["job"]["id"], tmp_path)
        info = json.loads((folder / "info.json").read_text())
        info["network"] = {"kind": "standard", "name": "alexnet"}
        resp = _upload(
            client,
            weights=("weights.safetensors", (folder / "weights.safetensors").read_bytes(), "a/b"),
            info=("info.json", json.dumps(info).encode(), "application/json"),
            mean=("mean.npy", (folder / "mean.npy").read_bytes(), "a/b"),
        )
    assert resp.status_code == 400
    assert resp.json()["code"] == "invalid_model"
    assert "do not fit" in resp.json()["detail"]


def test_a_png_is_not_accepted_as_weights(pg_stack: Stack) -> None:
    with pg_stack.client() as client:
        resp = _upload(
            client,
            weights=("w.safetensors", png_bytes(np.zeros((4, 4), np.uint8)), "a/b"),
            info=("info.json", b"{}", "application/json"),
        )
    assert resp.status_code == 400
    assert resp.json()["code"] == "invalid_weights"
