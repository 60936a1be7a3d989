"""Dataset import end to end: HTTP API, PostgreSQL, Redis and a real Celery worker process."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import Stack, digits_arrays, post_dataset, wait_for


def test_digits_archive_imports_with_ten_classes_and_a_quarter_for_validation(
    digits_dataset: dict,
) -> None:
    ds = digits_dataset
    assert ds["status"] == "done", ds["error"]
    _, labels = digits_arrays()
    per_class = Counter(int(x) for x in labels)
    assert ds["classes"] == [str(i) for i in range(10)]
    assert ds["num_images"] == 1797
    assert ds["skipped"] == 0
    for i, name in enumerate(ds["classes"]):
        train = ds["splits"]["train"]["per_class"][name]
        val = ds["splits"]["val"]["per_class"][name]
        assert train + val == per_class[i]
        assert val == round(per_class[i] * 0.25)
    assert ds["splits"]["val"]["images"] == pytest.approx(1797 * 0.25, abs=5)
    assert (ds["image_width"], ds["image_height"], ds["image_channels"]) == (28, 28, 1)
    assert ds["encoding"] == "raw"
    assert ds["size_bytes"] > 1797 * 28 * 28
    assert ds["images_per_second"] > 0
    assert [h["status"] for h in ds["status_history"]] == [
        "initialized",
        "waiting",
        "running",
        "done",
    ]


def test_dataset_is_listed_and_filtered_by_status(pg_stack: Stack, digits_dataset: dict) -> None:
    with pg_stack.client() as client:
        done = client.get("/datasets", params={"status": "done", "per_page": 200}).json()
        assert digits_dataset["id"] in [d["id"] for d in done["items"]]
        errors = client.get("/datasets", params={"status": "error", "per_page": 200}).json()
        assert digits_dataset["id"] not in [d["id"] for d in errors["items"]]
        bad = client.get("/datasets", params={"status": "nope"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")


def test_explore_pages_through_one_class_with_png_images(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    ds_id = digits_dataset["id"]
    with pg_stack.client() as client:
        page = client.get(
            f"/datasets/{ds_id}/samples", params={"split": "val", "label": 3, "per_page": 10}
        ).json()
        assert page["total"] == digits_dataset["splits"]["val"]["per_class"]["3"]
        assert len(page["items"]) == 10
        assert all(item["label"] == 3 and item["class_name"] == "3" for item in page["items"])
        image = client.get(page["items"][0]["image_url"])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        decoded = np.asarray(Image.open(io.BytesIO(image.content)))
        assert decoded.shape == (28, 28)
        assert decoded.max() > 100  # a digit, not an empty image
        missing = client.get(f"/datasets/{ds_id}/samples/val/100000")
        assert missing.status_code == 404


def test_mean_image_is_the_average_of_the_training_images(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    ds_id = digits_dataset["id"]
    with pg_stack.client() as client:
        resp = client.get(f"/datasets/{ds_id}/mean.png")
        assert resp.status_code == 200
        mean = np.asarray(Image.open(io.BytesIO(resp.content))).astype(np.float64)
        assert mean.shape == (28, 28)
        # digits are centred: the middle is brighter than the border on average
        assert mean[10:18, 10:18].mean() > mean[:, :2].mean() + 20


def test_health_reports_database_and_broker(pg_stack: Stack) -> None:
    with pg_stack.client() as client:
        health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["database"]["ok"]
    assert health["database"]["detail"] == "postgresql"
    assert health["broker"]["ok"]


def test_docs_are_served(pg_stack: Stack) -> None:
    import httpx

    assert httpx.get(pg_stack.url + "/docs").status_code == 200
    schema = httpx.get(pg_stack.url + "/openapi.json").json()
    assert "/api/v1/datasets" in schema["paths"]


def test_delete_removes_the_row_and_the_files(
    pg_stack: Stack, digits_zip: Path, pg_env: dict
) -> None:
    with pg_stack.client() as client:
        resp = post_dataset(
            client,
            {"name": "to-delete", "image_width": 8, "image_height": 8, "channels": 1},
            {"archive": ("d.zip", digits_zip.read_bytes(), "application/zip")},
        )
        ds = wait_for(client, f"/datasets/{resp.json()['id']}")
        assert ds["status"] == "done"
        folder = Path(pg_env["DIGITS_DATA_DIR"]) / "datasets" / ds["id"]
        assert folder.is_dir()
        assert client.delete(f"/datasets/{ds['id']}").status_code == 204
        assert client.get(f"/datasets/{ds['id']}").status_code == 404
        assert not folder.exists()
        assert client.delete(f"/datasets/{ds['id']}").status_code == 404
