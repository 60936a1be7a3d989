"""The model service under hostile input: a real service process, real torch models.

Every answer to bad input is a 4xx JSON `{"code", "detail"}` that quotes no server path and no
Python object repr; an upload's declared sizes never make the service allocate the network
before its weights are checked.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from shared.schemas.models import ModelCheckpoint
from tests.support import Stack, free_port, png_bytes
from worker.training.models import build_model

CLASSES = ["zero", "one", "two"]
LENET = {"kind": "standard", "name": "lenet"}
WEIGHTS_LIMIT = 64 * 1024**2  # the service under test refuses weights files over this
RSS_BUDGET_MB = 200.0


def report(line: str) -> None:
    """Tests print what they measure."""
    print(line, flush=True)


@dataclass
class Service:
    """A model service process and the data directory it serves."""

    stack: Stack
    url: str
    data: Path
    checkpoint: Path  # a LeNet training checkpoint, 28x28 grayscale, 3 classes
    model_dir: Path  # the same model as an unpacked DIGITS-style folder

    @property
    def pid(self) -> int:
        return self.stack.procs[0].pid

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def upload_copy(self, mutate: Callable[[dict[str, Any], Path], Any]) -> Path:
        """A copy of the good model folder with info.json changed by `mutate(info, folder)`."""
        folder = self.data / "uploads" / uuid.uuid4().hex
        shutil.copytree(self.model_dir, folder)
        info = json.loads((folder / "info.json").read_text())
        if mutate(info, folder) is not False:  # False: mutate wrote info.json itself
            (folder / "info.json").write_text(json.dumps(info))
        return folder

    def pretrained(self, client: httpx.Client, source: Path) -> httpx.Response:
        out = self.data / "pretrained" / uuid.uuid4().hex
        return client.post(
            "/pretrained", json={"source": str(source), "out_dir": str(out), "name": "upload"}
        )


def write_checkpoint(
    path: Path,
    network: dict[str, Any],
    classes: list[str],
    shape: tuple[int, int, int],
    *,
    mean: bool = True,
) -> Path:
    """A training checkpoint as the engine writes one (state dict, shapes, preprocessing)."""
    height, width, channels = shape
    torch.manual_seed(0)
    net = build_model(network, len(classes), channels, height, width)
    data = {
        "model": net.state_dict(),
        "network": network,
        "classes": classes,
        "image_shape": [height, width, channels],
        "preprocess": {
            "use_mean": "image" if mean else "none",
            "crop_size": None,
            "mean": torch.full((channels, height, width), 30.0) if mean else None,
        },
        "epoch": 1,
        "metrics": {"val/accuracy": 0.5},
    }
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One model service process (CPU, one torch thread) for the module."""
    from worker import model_server
    from worker.training import inference

    data = tmp_path_factory.mktemp("model-service-data")
    checkpoint = write_checkpoint(data / "lenet.pt", LENET, CLASSES, (28, 28, 1))
    model_dir = data / "lenet-model"
    model_dir.mkdir()
    model_server.write_model_dir(
        inference.load_checkpoint(checkpoint),
        model_dir,
        name="lenet",
        resize_mode="squash",
        checkpoint=ModelCheckpoint(name="epoch-1", epoch=1),
        exports=[],
    )
    port = free_port()
    env = {
        **os.environ,
        "DIGITS_DATA_DIR": str(data),
        "DIGITS_MODEL_SERVER_URL": f"http://127.0.0.1:{port}",
        "DIGITS_MODEL_SERVER_DEVICE": "cpu",
        "DIGITS_MODEL_SERVER_THREADS": "1",
        "DIGITS_PRETRAINED_MAX_WEIGHTS_BYTES": str(WEIGHTS_LIMIT),
        "DIGITS_CLASSIFY_MAX_IMAGES": "8",
        "DIGITS_LOG_LEVEL": "INFO",
    }
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("model-service-logs"))
    stack.start_model_server()
    try:
        yield Service(stack, f"http://127.0.0.1:{port}", data, checkpoint, model_dir)
    finally:
        stack.stop()


def assert_clean_problem(resp: httpx.Response, service: Service, status: int, code: str) -> str:
    """A JSON {code, detail} answer with this status, quoting no path and no object repr."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"code", "detail"}, body
    assert body["code"] == code, body
    detail = str(body["detail"])
    assert str(service.data) not in detail, detail
    assert " object at 0x" not in detail, detail
    assert "Traceback" not in detail, detail
    return detail


def tiff_lab() -> bytes:
    buf = io.BytesIO()
    Image.new("LAB", (12, 12), (50, 10, 10)).save(buf, format="TIFF")
    return buf.getvalue()


def digit_png(value: int = 200) -> bytes:
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = value
    return png_bytes(img)


# -- finding 1: declared sizes are bounded; weights are checked on the meta device ---------


@pytest.mark.parametrize(
    ("label", "change", "expect"),
    [
        ("a 5000 px side", {"input": {"width": 5000, "height": 5000}}, "input.width"),
        ("1,000,000 classes", {"classes": [str(i) for i in range(1_000_000)]}, "info.json"),
        ("70,000 classes", {"classes": [str(i) for i in range(70_000)]}, "classes"),
        ("2 channels", {"input": {"channels": 2}}, "input.channels"),
        ("crop larger than the input", {"input": {"crop_size": 29}}, "crop_size"),
        ("crop of 10**12", {"input": {"crop_size": 10**12}}, "crop_size"),
        ("a negative crop", {"input": {"crop_size": -4}}, "crop_size"),
        (
            "201 custom layers",
            {
                "network": {
                    "kind": "custom",
                    "layers": [{"type": "relu"}] * 200 + [{"type": "linear"}],
                }
            },
            "network",
        ),
    ],
)
def test_declared_sizes_beyond_the_bounds_are_refused(
    service: Service, label: str, change: dict[str, Any], expect: str
) -> None:
    def mutate(info: dict[str, Any], _folder: Path) -> None:
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(info.get(key), dict):
                info[key].update(value)
            else:
                info[key] = value

    with service.client() as client:
        t0 = time.perf_counter()
        resp = service.pretrained(client, service.upload_copy(mutate))
        took = time.perf_counter() - t0
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"{label}: {resp.status_code} in {took:.2f}s: {detail[:160]}")
    assert expect in detail


def _peak_rss_while(pid: int, action: Callable[[], None]) -> tuple[float, float, float]:
    """Run action while sampling the process's RSS every 2 ms: (before, peak, after) in MB."""
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    after = proc.memory_info().rss
    mb = 1024.0**2
    return before / mb, max(peak, after) / mb, after / mb


def _declare_big_input(info: dict[str, Any], _folder: Path) -> None:
    info["input"].update(width=600, height=600)


def _declare_many_classes(info: dict[str, Any], _folder: Path) -> None:
    info["classes"] = [f"class {i}" for i in range(60_000)]


def _declare_a_million_classes(info: dict[str, Any], _folder: Path) -> None:
    info["classes"] = [str(i) for i in range(1_000_000)]


def _declare_alexnet(info: dict[str, Any], _folder: Path) -> None:
    info["network"] = {"kind": "standard", "name": "alexnet"}
    info["input"].update(width=256, height=256)


def test_hostile_declarations_stay_under_200_mb_of_service_memory(service: Service) -> None:
    """600x600 LeNet (540M weights), 60,000 or 1,000,000 classes, AlexNet at 256 px."""
    uploads = {
        "600x600 input": service.upload_copy(_declare_big_input),
        "60,000 classes": service.upload_copy(_declare_many_classes),
        "1,000,000 classes": service.upload_copy(_declare_a_million_classes),
        "alexnet 256px": service.upload_copy(_declare_alexnet),
    }
    with service.client(timeout=300) as client:
        warm = service.pretrained(client, service.model_dir)  # imports and allocator warmed
        assert warm.status_code == 200, warm.text
        answers: list[httpx.Response] = []

        def send_all() -> None:
            for _round in range(3):
                for folder in uploads.values():
                    answers.append(service.pretrained(client, folder))

        t0 = time.perf_counter()
        before, peak, after = _peak_rss_while(service.pid, send_all)
        took = time.perf_counter() - t0
    report(
        f"{len(answers)} hostile uploads in {took:.2f}s: service RSS {before:.0f} MB before, "
        f"peak {peak:.0f} MB (+{peak - before:.1f}), {after:.0f} MB after "
        f"(+{after - before:.1f}); first answer: {answers[0].text[:200]}"
    )
    for resp, label in zip(answers, [*uploads] * 3, strict=True):
        detail = assert_clean_problem(resp, service, 400, "invalid_model")
        expected = "info.json is" if label == "1,000,000 classes" else "do not fit"
        assert expected in detail, (label, detail)
    assert peak - before < RSS_BUDGET_MB
    assert after - before < RSS_BUDGET_MB


def test_weights_file_over_the_limit_is_refused_before_it_is_read(
    service: Service, tmp_path: Path
) -> None:
    """A real 40,000-class LeNet (80 MB of weights) against a 64 MiB limit."""
    classes = [f"c{i}" for i in range(40_000)]
    net = build_model(LENET, len(classes), 1, 28, 28)
    weights = {k: v.contiguous() for k, v in net.state_dict().items()}

    def mutate(info: dict[str, Any], folder: Path) -> None:
        info["classes"] = classes
        save_file(weights, str(folder / "weights.safetensors"))

    folder = service.upload_copy(mutate)
    size = (folder / "weights.safetensors").stat().st_size
    answers: list[httpx.Response] = []
    with service.client(timeout=300) as client:
        before, peak, _after = _peak_rss_while(
            service.pid, lambda: answers.append(service.pretrained(client, folder))
        )
    resp = answers[0]
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(
        f"weights {size / 1024**2:.1f} MB vs limit {WEIGHTS_LIMIT / 1024**2:.0f} MB: "
        f"{resp.status_code}, RSS +{peak - before:.1f} MB: {detail}"
    )
    assert "larger than" in detail


def test_weights_with_a_mismatched_tensor_name_the_tensor(service: Service) -> None:
    def mutate(info: dict[str, Any], _folder: Path) -> None:
        info["classes"] = [*CLASSES, "three"]

    with service.client() as client:
        resp = service.pretrained(client, service.upload_copy(mutate))
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"4 classes declared, 3-class weights: {detail}")
    assert "7.weight" in detail
    assert "500" in detail


def test_a_truncated_safetensors_file_is_refused(service: Service) -> None:
    def mutate(_info: dict[str, Any], folder: Path) -> None:
        path = folder / "weights.safetensors"
        path.write_bytes(path.read_bytes()[:-100])

    with service.client() as client:
        resp = service.pretrained(client, service.upload_copy(mutate))
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"truncated weights: {detail}")


# -- finding 2: info.json is a validated schema --------------------------------------------


def test_a_100000_deep_info_json_is_a_400(service: Service) -> None:
    def mutate(_info: dict[str, Any], folder: Path) -> bool:
        (folder / "info.json").write_text("[" * 100_000 + "]" * 100_000)
        return False

    with service.client() as client:
        t0 = time.perf_counter()
        resp = service.pretrained(client, service.upload_copy(mutate))
        took = time.perf_counter() - t0
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"100,000-deep info.json: {resp.status_code} in {took:.3f}s: {detail}")
    assert "deep" in detail


def test_an_info_json_over_the_size_limit_is_a_400(service: Service) -> None:
    def mutate(info: dict[str, Any], _folder: Path) -> None:
        info["comment"] = "x" * (3 * 1024**2)

    with service.client() as client:
        resp = service.pretrained(client, service.upload_copy(mutate))
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"3 MiB info.json: {detail}")
    assert "info.json" in detail


def test_unknown_metadata_keys_are_dropped_from_what_is_stored_and_returned(
    service: Service,
) -> None:
    def mutate(info: dict[str, Any], _folder: Path) -> None:
        info["comment"] = "made by hand"
        info["framework"]["extra"] = {"nested": [1, 2, 3]}
        info["files"]["readme"] = "README.md"

    out = service.data / "pretrained" / "unknown-keys"
    with service.client() as client:
        resp = client.post(
            "/pretrained",
            json={"source": str(service.upload_copy(mutate)), "out_dir": str(out), "name": "x"},
        )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    stored = json.loads((out / "info.json").read_text())
    report(f"answer keys {sorted(answer)}; framework {answer['framework']}")
    for doc in (answer, stored):
        assert "comment" not in doc
        assert "extra" not in doc["framework"]
        assert "readme" not in doc["files"]
        assert doc["format"] == "digits-model/1"
        assert doc["classes"] == CLASSES
    assert stored == answer


@pytest.mark.parametrize(
    ("label", "mutate", "expect"),
    [
        (
            "resize_mode bogus",
            lambda i, _f: i["input"].update(resize_mode="bogus"),
            "input.resize_mode",
        ),
        (
            "an unknown key in the network",
            lambda i, _f: i["network"].update(pretrained_url="x" * 1000),
            "network",
        ),
        ("an unknown input key", lambda i, _f: i["input"].update(normalize="imagenet"), "input"),
        ("class names as numbers", lambda i, _f: i.update(classes=[0, 1, 2]), "classes"),
        (
            "a 10,000-char class name",
            lambda i, _f: i.update(classes=["a", "b" * 10_000]),
            "classes",
        ),
        ("a class name with a newline", lambda i, _f: i.update(classes=["a", "b\nc"]), "classes"),
        ("duplicate class names", lambda i, _f: i.update(classes=["a", "a", "b"]), "classes"),
        ("a NaN metric", lambda i, _f: i.update(metrics={"val/accuracy": float("nan")}), "metrics"),
        ("another format", lambda i, _f: i.update(format="digits-model/9"), "format"),
        ("classes missing", lambda i, _f: i.pop("classes"), "classes"),
        ("a weights path", lambda i, _f: i["files"].update(weights="../lenet.pt"), "files.weights"),
    ],
)
def test_info_json_fields_are_validated(
    service: Service, label: str, mutate: Callable[[dict[str, Any], Path], Any], expect: str
) -> None:
    with service.client() as client:
        resp = service.pretrained(client, service.upload_copy(mutate))
    detail = assert_clean_problem(resp, service, 400, "invalid_model")
    report(f"{label}: {detail[:200]}")
    assert expect in detail


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_a_diverged_checkpoint_is_described_without_its_nan_metric(service: Service) -> None:
    """A NaN loss reached info.json as `NaN` (not JSON) and dropped the /pretrained connection."""
    path = write_checkpoint(service.data / "diverged.pt", LENET, CLASSES, (28, 28, 1))
    data = torch.load(path, weights_only=True)
    data["metrics"] = {"val/loss": float("nan"), "val/accuracy": 0.25, "train/loss": float("inf")}
    torch.save(data, path)
    archive = service.data / "diverged.tar.gz"
    with service.client() as client:
        resp = service.pretrained(client, path)
        exported = client.post("/export", json={"model": str(path), "out": str(archive)})
    assert resp.status_code == 200, resp.text[:300]
    assert exported.status_code == 200, exported.text[:300]
    with tarfile.open(archive) as tf:
        member = tf.extractfile("info.json")
        assert member is not None
        info = json.loads(member.read(), parse_constant=_refuse_constant)
    report(
        f"diverged checkpoint: /pretrained metrics {resp.json()['metrics']}, "
        f"export {info['metrics']}"
    )
    assert resp.json()["metrics"] == info["metrics"] == {"val/accuracy": 0.25}


# -- finding 3: every handler answers bad input with a 4xx JSON, failures with a clean 500 -


def test_classify_answers_the_good_images_and_flags_the_bad_one(service: Service) -> None:
    """One undecodable file among PNGs and a LAB TIFF (a 500 for the whole request before)."""
    files = [
        ("images", ("one.png", digit_png(), "image/png")),
        ("images", ("lab.tif", tiff_lab(), "image/tiff")),
        ("images", ("junk.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")),
        ("images", ("two.png", digit_png(90), "image/png")),
    ]
    with service.client() as client:
        resp = client.post("/classify", data={"model": str(service.checkpoint)}, files=files)
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    predictions = body["predictions"]
    report(f"classify of 4 images, one undecodable: {json.dumps(predictions)[:500]}")
    assert [p["filename"] for p in predictions] == ["one.png", "lab.tif", "junk.png", "two.png"]
    one, lab, junk, two = predictions
    assert len(one["top"]) == len(two["top"]) == 3
    assert "error" not in one
    assert "error" not in two
    assert junk["top"] == []
    assert junk["error"].startswith("junk.png: ")
    assert " object at 0x" not in junk["error"]
    assert len(lab["top"]) == 3 or lab["error"].startswith("lab.tif: ")
    assert [p is None for p in body["probabilities"]] == [False, "error" in lab, True, False]


def test_classify_of_only_unusable_images_is_a_400(service: Service) -> None:
    with service.client() as client:
        resp = client.post(
            "/classify",
            data={"model": str(service.checkpoint)},
            files=[("images", ("junk.png", b"not an image at all", "image/png"))],
        )
    detail = assert_clean_problem(resp, service, 400, "invalid_image")
    report(f"one undecodable image: {detail}")
    assert "junk.png" in detail


@pytest.mark.parametrize(
    ("label", "form", "images", "status", "code"),
    [
        ("no images", {}, 0, 400, "bad_request"),
        ("resize_mode bogus", {"resize_mode": "bogus"}, 1, 400, "bad_request"),
        ("top_k not a number", {"top_k": "many"}, 1, 400, "bad_request"),
        ("top_k 0", {"top_k": "0"}, 1, 400, "bad_request"),
        ("more images than allowed", {}, 9, 400, "bad_request"),
        ("no model field", {"model": None}, 1, 400, "bad_request"),
    ],
)
def test_classify_form_errors_are_400(
    service: Service, label: str, form: dict[str, Any], images: int, status: int, code: str
) -> None:
    data = {"model": str(service.checkpoint), **form}
    data = {k: v for k, v in data.items() if v is not None}
    files = [("images", (f"{i}.png", digit_png(), "image/png")) for i in range(images)]
    with service.client() as client:
        resp = client.post("/classify", data=data, files=files or None)
    detail = assert_clean_problem(resp, service, status, code)
    report(f"classify, {label}: {resp.status_code} {detail}")


@pytest.mark.parametrize(
    ("label", "content", "content_type"),
    [
        (
            "a multipart body cut short",
            b"--b\r\nContent-Disposition: form-da",
            "multipart/form-data; boundary=b",
        ),
        ("a multipart type with no boundary", b"x", "multipart/form-data"),
        ("a url-encoded form", b"model=x&images=y", "application/x-www-form-urlencoded"),
        ("JSON instead of a form", b'{"model": "x"}', "application/json"),
    ],
)
def test_classify_bodies_that_are_no_form_are_400(
    service: Service, label: str, content: bytes, content_type: str
) -> None:
    with service.client() as client:
        resp = client.post("/classify", content=content, headers={"content-type": content_type})
    detail = assert_clean_problem(resp, service, 400, resp.json().get("code", "?"))
    report(f"classify, {label}: {resp.status_code} {resp.json()['code']}: {detail}")
    assert resp.json()["code"] in ("bad_request", "invalid_path")


def _raw_multipart(fields: list[tuple[bytes, bytes | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so a file name can hold any byte."""
    boundary = b"hostile-boundary-7d2f"
    parts = []
    for name, filename, content in fields:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"\r\nContent-Type: image/png'
        parts.append(b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n")
        parts.append(content + b"\r\n")
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=" + boundary.decode()}


@pytest.mark.parametrize(
    ("label", "filename"), [("a NUL byte", b"a\x00b.png"), ("300 bytes", b"n" * 300 + b".png")]
)
def test_classify_echoes_odd_image_names(service: Service, label: str, filename: bytes) -> None:
    body, headers = _raw_multipart(
        [(b"model", None, str(service.checkpoint).encode()), (b"images", filename, digit_png())]
    )
    with service.client() as client:
        resp = client.post("/classify", content=body, headers=headers)
    assert resp.status_code == 200, resp.text[:300]
    name = resp.json()["predictions"][0]["filename"]
    report(f"image named with {label}: 200, echoed as {name[:40]!r} ({len(name)} chars)")
    assert len(resp.json()["predictions"][0]["top"]) == 3


def _path_cases(service: Service) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, endpoint, JSON body or form) with a NUL byte or a 300-byte name in a path."""
    nul = str(service.data / "mo\x00del.pt")
    long = str(service.data / ("n" * 300))
    good = str(service.checkpoint)
    out = str(service.data / "exports" / "x.tar.gz")
    return [
        ("classify model with NUL", "/classify", {"model": nul}),
        ("classify model of 300 bytes", "/classify", {"model": long}),
        ("export model with NUL", "/export", {"model": nul, "out": out}),
        ("export out of 300 bytes", "/export", {"model": good, "out": long}),
        ("export out with NUL", "/export", {"model": good, "out": nul}),
        ("pretrained source with NUL", "/pretrained", {"source": nul, "out_dir": out}),
        ("pretrained source of 300 bytes", "/pretrained", {"source": long, "out_dir": out}),
        ("pretrained out_dir of 300 bytes", "/pretrained", {"source": good, "out_dir": long}),
    ]


def test_paths_with_a_nul_byte_or_a_300_byte_name_are_400(service: Service) -> None:
    with service.client() as client:
        for label, endpoint, body in _path_cases(service):
            if endpoint == "/classify":
                files = [("images", ("a.png", digit_png(), "image/png"))]
                resp = client.post(endpoint, data=body, files=files)
            else:
                resp = client.post(endpoint, json=body)
            detail = assert_clean_problem(resp, service, 400, "invalid_path")
            report(f"{label}: {resp.status_code} {detail}")


def test_a_path_outside_the_data_directory_is_refused_without_quoting_it(
    service: Service,
) -> None:
    with service.client() as client:
        resp = client.post("/export", json={"model": "/etc/passwd", "out": "/etc/x.tar.gz"})
    detail = assert_clean_problem(resp, service, 400, "invalid_path")
    report(f"outside the data directory: {detail}")
    assert "/etc" not in detail


@pytest.mark.parametrize(
    ("label", "content"),
    [
        ("not JSON", b"{not json"),
        ("a JSON list", b"[1, 2]"),
        ("a 100,000-deep body", b"[" * 100_000 + b"]" * 100_000),
        ("source missing", b'{"out_dir": "x"}'),
        ("source a number", b'{"source": 5, "out_dir": "x"}'),
        ("an unknown field", b'{"source": "a", "out_dir": "b", "colour": "red"}'),
    ],
)
def test_pretrained_bodies_that_are_not_the_contract_are_400(
    service: Service, label: str, content: bytes
) -> None:
    with service.client() as client:
        resp = client.post(
            "/pretrained", content=content, headers={"content-type": "application/json"}
        )
    detail = assert_clean_problem(resp, service, 400, "bad_request")
    report(f"/pretrained, {label}: {detail[:200]}")


@pytest.mark.parametrize(
    ("label", "change"),
    [
        ("exports a string", {"exports": "onnx"}),
        ("an unknown export", {"exports": ["tensorflow"]}),
        ("format rar", {"format": "rar"}),
        ("resize_mode bogus", {"resize_mode": "bogus"}),
        ("a 10,000-char name", {"name": "n" * 10_000}),
        ("a numeric name", {"name": 7}),
    ],
)
def test_export_bodies_that_are_not_the_contract_are_400(
    service: Service, label: str, change: dict[str, Any]
) -> None:
    body = {"model": str(service.checkpoint), "out": str(service.data / "e.tar.gz"), **change}
    with service.client() as client:
        resp = client.post("/export", json=body)
    detail = assert_clean_problem(resp, service, 400, "bad_request")
    report(f"/export, {label}: {detail[:200]}")


def test_a_missing_model_is_409_without_its_path(service: Service) -> None:
    with service.client() as client:
        resp = client.post(
            "/classify",
            data={"model": str(service.data / "gone.pt")},
            files=[("images", ("a.png", digit_png(), "image/png"))],
        )
        broken = service.data / "broken.pt"
        broken.write_bytes(b"PK\x03\x04 this is no checkpoint")
        resp_broken = client.post(
            "/export", json={"model": str(broken), "out": str(service.data / "b.tar.gz")}
        )
    detail = assert_clean_problem(resp, service, 409, "model_unavailable")
    detail_broken = assert_clean_problem(resp_broken, service, 409, "model_unavailable")
    report(f"missing model: {detail}; unreadable checkpoint: {detail_broken}")


def test_an_unexpected_failure_is_a_clean_500_and_the_connection_stays_usable(
    service: Service,
) -> None:
    """out_dir below a regular file: the service cannot write there (not the caller's input)."""
    blocker = service.data / "a-file"
    blocker.write_text("x")
    with service.client() as client:
        resp = client.post(
            "/pretrained",
            json={"source": str(service.checkpoint), "out_dir": str(blocker / "model")},
        )
        detail = assert_clean_problem(resp, service, 500, "model_service_error")
        again = client.get("/health")  # the same keep-alive connection
    report(f"unexpected failure: {resp.status_code} {detail}; then /health {again.status_code}")
    assert again.status_code == 200


def test_unknown_routes_and_methods_answer_json(service: Service) -> None:
    with service.client() as client:
        missing = client.get("/nope")
        wrong = client.get("/classify")
    assert_clean_problem(missing, service, 404, "not_found")
    assert_clean_problem(wrong, service, 405, "method_not_allowed")


# -- finding 4: a slow export does not hold up classify ------------------------------------


def test_a_slow_export_does_not_hold_up_classify(service: Service) -> None:
    """ResNet-18 exported to ONNX and TorchScript while LeNet classifies."""
    big = write_checkpoint(
        service.data / "resnet18.pt",
        {"kind": "standard", "name": "resnet18"},
        [str(i) for i in range(10)],
        (32, 32, 3),
        mean=False,
    )
    finished: dict[str, float] = {}
    export_answer: list[httpx.Response] = []

    def export() -> None:
        with service.client(timeout=300) as client:
            export_answer.append(
                client.post(
                    "/export",
                    json={
                        "model": str(big),
                        "out": str(service.data / "resnet18.tar.gz"),
                        "exports": ["onnx", "torchscript"],
                    },
                )
            )
        finished["export"] = time.perf_counter()

    with service.client() as client:  # the LeNet is loaded and warm before the export starts
        warm = client.post(
            "/classify",
            data={"model": str(service.checkpoint)},
            files=[("images", ("w.png", digit_png(), "image/png"))],
        )
        assert warm.status_code == 200, warm.text
        started = time.perf_counter()
        thread = threading.Thread(target=export)
        thread.start()
        time.sleep(0.3)
        latencies = []
        for i in range(5):
            t0 = time.perf_counter()
            resp = client.post(
                "/classify",
                data={"model": str(service.checkpoint)},
                files=[("images", (f"{i}.png", digit_png(), "image/png"))],
            )
            assert resp.status_code == 200, resp.text
            latencies.append(time.perf_counter() - t0)
        classified = time.perf_counter()
        thread.join()
    assert export_answer[0].status_code == 200, export_answer[0].text
    report(
        f"export took {finished['export'] - started:.2f}s; 5 classify calls during it took "
        f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms, all done "
        f"{finished['export'] - classified:.2f}s before the export finished"
    )
    assert classified < finished["export"]
