"""Schemathesis against the live OpenAPI schema: no 5xx, no response that breaks the schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

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


# The inputs Schemathesis does not make, and that found the hardening defects: non-finite and
# 64-bit-overflowing numbers in every numeric parameter, long and odd names in every string
# parameter, hostile images of every format Pillow opens and hostile archives on every upload
# route. Each must be a 4xx (or a success), never a 5xx, and leave the connection usable.
HOSTILE_NUMBERS = ["nan", "inf", "-inf", "1e400", str(2**63), str(2**64), str(-(2**63) - 1)]
HOSTILE_STRINGS = ["a" * 300, "\x00", "../../etc/passwd", "\u202e" * 50, "%00", "ü" * 300]


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    ops = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "patch", "put", "delete") and not path.endswith("/events"):
                ops.append((method.upper(), path, op))
    return ops


def _fill(path: str, fuzzer: dict[str, str]) -> str:
    return (
        path.replace("/api/v1", "")
        .replace("{dataset_id}", fuzzer["dataset_id"])
        .replace("{job_id}", fuzzer["job_id"])
        .replace("{split}", "train")
        .replace("{index}", "0")
        .replace("{model_id}", str(uuid.uuid4()))
        .replace("{token_id}", str(uuid.uuid4()))
        .replace("{user_id}", str(uuid.uuid4()))
    )


def test_hostile_numbers_and_names_in_every_parameter(
    pg_stack: Stack, fuzzer: dict[str, str]
) -> None:
    import httpx

    schema = httpx.get(pg_stack.url + "/openapi.json").json()
    sent = 0
    server_errors = []
    with pg_stack.client(fuzzer["token"]) as client:
        for method, path, op in _operations(schema):
            if method == "DELETE":
                continue  # the fixture's objects must survive the sweep
            for param in op.get("parameters", []):
                if param["in"] not in ("query", "path"):
                    continue
                kind = param.get("schema", {}).get("type") or next(
                    (s.get("type") for s in param.get("schema", {}).get("anyOf", [])), "string"
                )
                values = HOSTILE_NUMBERS if kind in ("integer", "number") else HOSTILE_STRINGS
                for value in values:
                    url = _fill(path, fuzzer)
                    params = {}
                    if param["in"] == "path":
                        url = url.replace("{" + param["name"] + "}", quote(value, safe=""))
                    else:
                        params[param["name"]] = value
                    if "{" in url:
                        continue
                    resp = client.request(method, url, params=params)
                    sent += 1
                    if resp.status_code >= 500:
                        server_errors.append(
                            (method, path, param["name"], value[:20], resp.text[:150])
                        )
                    assert client.get("/health").status_code in (200, 503)
    print(
        "FUZZ "
        + json.dumps({"hostile_parameter_requests": sent, "server_errors": len(server_errors)})
    )
    assert not server_errors, server_errors[:10]


def test_hostile_files_on_every_upload_route(
    pg_stack: Stack, fuzzer: dict[str, str], tmp_path: Path
) -> None:
    from tests.shared.test_archive_bombs import gnu_sparse_tar, pax_sparse_tar, zip_declaring
    from tests.worker.test_hostile_images import samples

    archives = {
        "gnu-sparse.tar": gnu_sparse_tar(tmp_path / "g.tar").read_bytes(),
        "pax-sparse.tar": pax_sparse_tar(tmp_path / "p.tar", "0.1").read_bytes(),
        "zip-declaring-1GiB.zip": zip_declaring(tmp_path / "z.zip").read_bytes(),
        "truncated.zip": zip_declaring(tmp_path / "t.zip").read_bytes()[:200],
        "not-an-archive.zip": b"hello",
    }
    images = {s.name: s.data for s in samples()}
    job = fuzzer["job_id"]
    routes = [
        ("/datasets", {"name": "f", "image_width": "8", "image_height": "8"}, "archive"),
        (f"/jobs/{job}/classify", {}, "archive"),
        (f"/jobs/{job}/evaluate", {}, "archive"),
        ("/pretrained-models", {}, "archive"),
    ]
    sent, server_errors = 0, []
    with pg_stack.client(fuzzer["token"]) as client:
        for path, data, field in routes:
            for name, body in archives.items():
                resp = client.post(path, data=data, files={field: (name, body, "a/x")})
                sent += 1
                if resp.status_code >= 500:
                    server_errors.append((path, name, resp.text[:150]))
        resp = client.post(
            f"/jobs/{job}/classify",
            files=[("images", (name, body, "image/x")) for name, body in list(images.items())[:30]],
        )
        sent += 1
        if resp.status_code >= 500:
            server_errors.append(("classify", "images", resp.text[:150]))
        for name, body in images.items():
            resp = client.post(f"/jobs/{job}/classify", files={"images": (name, body, "image/x")})
            sent += 1
            if resp.status_code >= 500:
                server_errors.append(("classify", name, resp.text[:150]))
        assert client.get("/health").status_code == 200
    print(
        "FUZZ " + json.dumps({"hostile_file_requests": sent, "server_errors": len(server_errors)})
    )
    assert not server_errors, server_errors[:10]
