"""The OpenAPI contract: committed, complete, and good enough to generate a working SDK."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.main import create_app
from shared.settings import Settings
from tests.support import ROOT, Stack, digits_arrays, png_bytes

SCHEMA_FILE = ROOT / "openapi.json"


def _schema() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def test_the_committed_schema_matches_the_app() -> None:
    """Regenerate with `python -m shared.cli openapi > openapi.json` after changing the API."""
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(_schema())), (
        "openapi.json is stale: run `digits openapi > openapi.json`"
    )


def test_every_operation_has_an_id_a_summary_a_tag_and_problem_errors() -> None:
    schema = _schema()
    seen = set()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert re.fullmatch(r"[a-z][a-z0-9_]*", op.get("operationId", "")), where
            assert op["operationId"] not in seen, where
            seen.add(op["operationId"])
            assert op.get("summary"), where
            assert op.get("tags"), where
            errors = [c for c in op["responses"] if c.startswith("4") or c.startswith("5")]
            if path.startswith("/api/v1") and path != "/api/v1/health":
                assert errors, f"{where} declares no error responses"
            for code in errors if path != "/api/v1/health" else []:  # health: a Health body
                content = op["responses"][code].get("content", {})
                assert "application/problem+json" in content, f"{where} {code}"
    assert len(seen) >= 40


@pytest.fixture(scope="module")
def sdk(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Python client generated from the live schema with openapi-python-client."""
    out = tmp_path_factory.mktemp("sdk")
    (out / "openapi.json").write_text(httpx.get(pg_stack.url + "/openapi.json").text)
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(out / "openapi.json"),
            "--output-path",
            str(out / "digits_client"),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(out))
    try:
        import digits_client

        yield digits_client
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.startswith("digits_client")]:
            del sys.modules[name]


def _until(fetch: Any, done: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_the_generated_sdk_drives_the_main_flow(
    sdk: Any, pg_stack: Stack, digits_zip: Path
) -> None:
    from digits_client import AuthenticatedClient

    with AuthenticatedClient(base_url=pg_stack.url, token=pg_stack.token, timeout=120) as client:
        _main_flow(client, digits_zip)


def _main_flow(client: Any, digits_zip: Path) -> None:
    from digits_client.api.datasets import create_dataset, get_dataset
    from digits_client.api.jobs import create_job, get_job, get_job_metrics
    from digits_client.api.models import classify_images, download_model
    from digits_client.models import (
        ClassifyForm,
        DatasetCreateForm,
        JobCreate,
        StandardNetwork,
        StandardNetworkName,
        SweepHyperparameters,
    )
    from digits_client.types import File

    created = create_dataset.sync_detailed(
        client=client,
        body=DatasetCreateForm(
            name="sdk-digits",
            image_width=28,
            image_height=28,
            channels=1,
            archive=File(
                payload=io.BytesIO(digits_zip.read_bytes()),
                file_name="d.zip",
                mime_type="application/zip",
            ),
        ),
    )
    assert created.status_code == 202, created.content
    dataset = _until(
        lambda: get_dataset.sync(created.parsed.id, client=client),
        lambda d: d.status in ("done", "error"),
    )
    assert dataset.status == "done"
    assert dataset.classes == [str(i) for i in range(10)]

    jobs = create_job.sync(
        client=client,
        body=JobCreate(
            dataset_id=dataset.id,
            name="sdk-lenet",
            network=StandardNetwork(name=StandardNetworkName.LENET),
            hyperparameters=SweepHyperparameters(epochs=3, learning_rate=0.05, batch_size=32),
        ),
    )
    job = _until(
        lambda: get_job.sync(jobs.jobs[0].id, client=client),
        lambda j: j.status in ("done", "error", "aborted"),
    )
    assert job.status == "done", job.error

    metrics = get_job_metrics.sync(job.id, client=client, names="val.accuracy")
    assert len(metrics.items) == 3
    assert max(p.value for p in metrics.items) > 0.8

    images, _labels = digits_arrays()
    big = png_bytes(images[5].repeat(4, axis=0).repeat(4, axis=1))
    result = classify_images.sync(
        job.id,
        client=client,
        body=ClassifyForm(
            images=[File(payload=io.BytesIO(big), file_name="five.png", mime_type="image/png")],
            top_k=3,
        ),
    )
    assert len(result.predictions[0].top) == 3
    top = result.predictions[0].top
    assert [t.label for t in top] != []
    assert all(t.label in dataset.classes for t in top)
    assert top[0].probability >= top[-1].probability

    archive = download_model.sync_detailed(job.id, client=client)
    assert archive.status_code == 200
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tf:
        assert {"info.json", "labels.txt", "weights.safetensors"} <= set(tf.getnames())
