"""Seeing inside a trained model over HTTP, through the real API, model service and worker:
explanations (direct and as a job), layer views on classify, int8/fp16 downloads, the CLI."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.api.test_cli import run as run_cli
from tests.support import Stack, wait_for


def _val_pngs(client: Any, dataset: dict, count: int) -> list[bytes]:
    page = client.get(
        f"/datasets/{dataset['id']}/samples", params={"split": "val", "per_page": count}
    ).json()
    return [client.get(item["image_url"]).content for item in page["items"]]


def _png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _explain(client: Any, job_id: str, pngs: list[bytes], **data: Any) -> Any:
    files = [("images", (f"img{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    return client.post(
        f"/jobs/{job_id}/explain",
        files=files,
        data={k: str(v) for k, v in data.items()},
        timeout=300,
    )


def test_explain_answers_with_an_overlay_the_layer_and_the_prediction(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        pngs = _val_pngs(client, digits_dataset, 4)
        classified = client.post(
            f"/jobs/{job['id']}/classify",
            files=[("images", (f"img{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
        ).json()
        started = time.perf_counter()
        resp = _explain(client, job["id"], pngs, method="gradcam")
        seconds = time.perf_counter() - started
    assert resp.status_code == 200, resp.text
    body = resp.json()
    print(f"explain 4 images: {seconds * 1000:.0f} ms, service {body['milliseconds']:.0f} ms")
    assert body["method"] == "gradcam"
    assert body["checkpoint"] == "best"
    for item, classes in zip(body["explanations"], classified["predictions"], strict=True):
        assert item["error"] is None
        assert item["layer"] == "2"  # LeNet's last convolution (the built-in map)
        assert item["map_size"] == [8, 8]
        assert item["map"] is None
        assert item["top"][0]["label"] == classes["top"][0]["label"]
        assert item["target"] == item["top"][0]  # the top prediction by default
        assert _png(item["overlay_png"]).size == (112, 112)  # 28 px enlarged 4x


def test_integrated_gradients_of_a_named_class_with_the_raw_map(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        pngs = _val_pngs(client, digits_dataset, 1)
        resp = _explain(
            client, job["id"], pngs, method="integrated_gradients", target="3", raw="true"
        )
    assert resp.status_code == 200, resp.text
    item = resp.json()["explanations"][0]
    raw = np.array(item["map"])
    print(f"IG of class 3: sum {raw.sum():.4f}, convergence delta {item['convergence_delta']:.5f}")
    assert item["target"]["label"] == "3"
    assert item["layer"] is None
    assert raw.shape == (28, 28) == tuple(item["map_size"])
    assert abs(item["convergence_delta"]) <= 0.05 * max(abs(raw.sum()), 1e-3)


def test_bad_explain_requests_are_refused_with_problems(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        pngs = _val_pngs(client, digits_dataset, 1)
        unknown = _explain(client, job["id"], pngs, method="saliency")
        target = _explain(client, job["id"], pngs, target="cat")
        nothing = client.post(f"/jobs/{job['id']}/explain", data={"method": "gradcam"})
        broken = _explain(client, job["id"], [b"not an image"])
        window = _explain(client, job["id"], pngs, method="occlusion", window="99")
    assert unknown.status_code == 422, unknown.text
    assert target.status_code == 400
    assert target.json()["code"] == "invalid_target"
    assert nothing.status_code == 400
    assert nothing.json()["code"] == "no_images"
    assert broken.status_code == 400
    assert broken.json()["code"] == "invalid_image"
    assert window.status_code == 400, window.text  # wider than the 28 px image
    for resp in (unknown, target, nothing, broken, window):
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_visualize_on_classify_gives_every_layer_of_lenet(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        pngs = _val_pngs(client, digits_dataset, 2)
        resp = client.post(
            f"/jobs/{job['id']}/classify",
            files=[("images", ("one.png", pngs[0], "image/png"))],
            data={"visualize": "true"},
        )
        plain = client.post(
            f"/jobs/{job['id']}/classify", files=[("images", ("one.png", pngs[0], "image/png"))]
        ).json()
        two = client.post(
            f"/jobs/{job['id']}/classify",
            files=[("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
            data={"visualize": "true"},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert plain["layers"] is None
    assert body["predictions"][0]["top"][0]["label"] == plain["predictions"][0]["top"][0]["label"]
    views = body["layers"]
    print(f"lenet layer views: {len(views)} layers, {len(resp.content):,} bytes")
    assert [v["type"] for v in views] == [
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert views[0]["output_shape"] == [20, 24, 24]
    assert views[0]["param_count"] == 20 * 25 + 20
    for view in views:
        stats = view["activations"]
        assert sum(stats["histogram"]["counts"]) + stats["nonfinite"] == np.prod(
            view["output_shape"]
        )
        _png(view["activations_png"])
    assert _png(views[0]["filters_png"]).size[0] >= 64
    assert two.status_code == 400
    assert two.json()["code"] == "visualize_one_image"


def test_an_archive_of_images_makes_an_explain_job(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        pngs = _val_pngs(client, digits_dataset, 5)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i, png in enumerate(pngs):
                zf.writestr(f"digits/{i}.png", png)
            zf.writestr("notes.txt", "not an image")
        resp = client.post(
            f"/jobs/{job['id']}/explain",
            files={"archive": ("images.zip", buf.getvalue(), "application/zip")},
            data={"method": "layercam"},
        )
        assert resp.status_code == 202, resp.text
        queued = resp.json()
        assert queued["kind"] == "explain"
        done = wait_for(client, f"/jobs/{queued['id']}", timeout=120)
        assert done["status"] == "done", done
        page = client.get(f"/jobs/{queued['id']}/explanations", params={"per_page": 3}).json()
        rest = client.get(
            f"/jobs/{queued['id']}/explanations", params={"per_page": 3, "page": 2}
        ).json()
        results = client.get(f"/jobs/{queued['id']}/results").json()
        not_explain = client.get(f"/jobs/{job['id']}/explanations")
    assert page["total"] == 5
    items = page["items"] + rest["items"]
    assert [i["filename"] for i in items] == [f"digits/{i}.png" for i in range(5)]
    for item in items:
        assert item["method"] == "layercam"
        assert item["layer"] == "2"
        _png(item["overlay_png"])
    assert [r["filename"] for r in results["items"]] == [i["filename"] for i in items]
    assert not_explain.status_code == 404


def test_int8_and_fp16_downloads_carry_their_report_and_run_on_uint8_images(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict, tmp_path: Path
) -> None:
    import onnxruntime

    job = lenet_job["job"]
    with pg_stack.client() as client:
        started = time.perf_counter()
        resp = client.get(
            f"/jobs/{job['id']}/download",
            params={"export": "onnx,onnx-int8,onnx-fp16", "format": "zip"},
            timeout=600,
        )
        seconds = time.perf_counter() - started
        bad = client.get(f"/jobs/{job['id']}/download", params={"export": "tflite"})
        pngs = _val_pngs(client, digits_dataset, 32)
    assert resp.status_code == 200, resp.text
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_export"
    zipfile.ZipFile(io.BytesIO(resp.content)).extractall(tmp_path)
    info = json.loads((tmp_path / "info.json").read_text())
    report = info["export_report"]
    print(f"lenet int8+fp16 download in {seconds:.1f} s: {json.dumps(report['variants'])}")
    assert info["files"]["onnx_int8"] == "model.int8.onnx"
    assert report["validation_split"] == "val"
    assert report["validation_images"] == sum(digits_dataset["splits"]["val"]["per_class"].values())
    fp32, int8 = report["variants"]["onnx"], report["variants"]["onnx-int8"]
    assert int8["bytes"] == (tmp_path / "model.int8.onnx").stat().st_size
    assert int8["size_ratio"] <= 0.3
    assert abs(int8["top1"] - fp32["top1"]) <= 0.01
    assert int8["latency_ms"] > 0
    arrays = np.stack([np.asarray(Image.open(io.BytesIO(p)))[..., None] for p in pngs])
    outputs = {}
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        session = onnxruntime.InferenceSession(
            str(tmp_path / name), providers=["CPUExecutionProvider"]
        )
        outputs[name] = session.run(None, {"images": arrays})[0]
        assert outputs[name].shape == (32, 10)
    agree = (outputs["model.int8.onnx"].argmax(1) == outputs["model.onnx"].argmax(1)).mean()
    assert agree >= 0.9


def test_the_cli_writes_the_overlay_png(
    pg_stack: Stack, lenet_job: dict, digits_dataset: dict, tmp_path: Path
) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        image = tmp_path / "seven.png"
        image.write_bytes(_val_pngs(client, digits_dataset, 1)[0])
    out = tmp_path / "out.png"
    result = run_cli(
        pg_stack, "explain", job["id"], str(image), "--method", "gradcam", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "gradcam" in result.stdout
    assert str(out) in result.stdout.replace("\n", "") or out.name in result.stdout
    as_json = run_cli(pg_stack, "explain", job["id"], str(image), "-o", str(out), "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["saved"] == [str(out)]
    assert body["explanations"][0]["layer"] == "2"
    with Image.open(out) as written:
        assert written.size == (112, 112)
    missing = run_cli(pg_stack, "explain", job["id"], str(tmp_path / "nope.png"))
    assert missing.returncode != 0
    assert "not a file" in missing.stderr
