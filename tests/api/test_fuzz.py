"""Schemathesis against the live OpenAPI schema: no 5xx, no response that breaks the schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import Stack, post_dataset, wait_for

EXAMPLES = int(os.environ.get("DIGITS_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def fuzzer(pg_stack: Stack, digits_zip: Path) -> dict[str, str]:
    """A fresh non-admin user with a dataset and a trained job of its own, so the fuzzer
    reaches past 404s, and cannot touch anybody else's objects."""
    with pg_stack.client() as admin:
        resp = admin.post("/users", json={"name": f"fuzz{uuid.uuid4().hex[:8]}"})
        assert resp.status_code == 201
        token = str(resp.json()["token"]["token"])
    with pg_stack.client(token) as client:
        resp = post_dataset(
            client,
            {
                "name": "fuzz",
                "image_width": 8,
                "image_height": 8,
                "channels": 1,
                "max_per_class": 10,
            },
            {"archive": ("d.zip", digits_zip.read_bytes(), "application/zip")},
        )
        dataset = wait_for(client, f"/datasets/{resp.json()['id']}")
        job = client.post(
            "/jobs",
            json={
                "dataset_id": dataset["id"],
                "name": "fuzz",
                "network": "lenet",
                "hyperparameters": {"epochs": 1},
            },
        ).json()["jobs"][0]
        wait_for(client, f"/jobs/{job['id']}", timeout=180)
    return {"token": token, "dataset_id": dataset["id"], "job_id": job["id"]}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    pg_stack: Stack, fuzzer: dict[str, str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        f'"path.dataset_id" = "{fuzzer["dataset_id"]}"\n'
        f'"path.job_id" = "{fuzzer["job_id"]}"\n'
    )
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{pg_stack.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {fuzzer['token']}",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--generation-database",
        "none",
        "--exclude-path-regex",
        "/events$",  # an endless SSE stream by design
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    (tmp_path / "schemathesis.out").write_text(result.stdout)
    tail = result.stdout[-6000:]
    print(tail)
    assert result.returncode == 0, tail + result.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    ops = re.search(r"Operations:\s+(\d+) selected", result.stdout)
    assert cases is not None
    assert ops is not None
    print(
        "FUZZ "
        + json.dumps(
            {
                "operations": int(ops.group(1)),
                "test_cases": int(cases.group(1)),
                "passed": int(cases.group(2)),
            }
        )
    )
