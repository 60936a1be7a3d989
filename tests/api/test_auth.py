"""Authentication and ownership: every route but health and the docs needs a valid token, and
another user's objects answer 404 and never appear in lists."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from api.main import create_app
from api.routers.ui import PUBLIC_PATHS as UI_PUBLIC
from shared.settings import Settings
from tests.support import Stack

PUBLIC = {
    "/api/v1/health",
    "/docs",
    "/docs/oauth2-redirect",
    "/openapi.json",
    "/redoc",
    *UI_PUBLIC,
}


def _walk(routes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of routes, descending into included routers."""
    out = []
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:  # a router included with a prefix
            out += _walk(original.routes, prefix + route.include_context.prefix)
            continue
        path = prefix + getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or []):
            out.append((method, path))
    return out


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, listed from the app itself."""
    app = create_app(Settings())
    return [
        (m, p) for m, p in _walk(app.routes) if m not in ("HEAD", "OPTIONS") and p not in PUBLIC
    ]


def _fill(path: str) -> str:
    return re.sub(
        r"\{[^}]+\}",
        lambda m: (
            "0"
            if m.group(0) == "{index}"
            else ("train" if m.group(0) == "{split}" else str(uuid.uuid4()))
        ),
        path,
    )


@pytest.fixture(scope="module")
def bob(pg_stack: Stack) -> dict[str, Any]:
    with pg_stack.client() as admin:
        resp = admin.post("/users", json={"name": f"bob{uuid.uuid4().hex[:6]}"})
        assert resp.status_code == 201, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def alice(pg_stack: Stack) -> dict[str, Any]:
    with pg_stack.client() as admin:
        resp = admin.post("/users", json={"name": f"alice{uuid.uuid4().hex[:6]}"})
        assert resp.status_code == 201
        return resp.json()


def test_routes_are_listed_from_the_app() -> None:
    routes = _routes()
    assert ("POST", "/api/v1/datasets") in routes
    assert ("GET", "/metrics") in routes
    assert len(routes) > 20


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("Bearer", "malformed_token"),
        ("Basic dXNlcjpwYXNz", "malformed_token"),
        ("Bearer dgt_not-a-real-token", "invalid_token"),
    ],
)
def test_every_route_refuses_a_missing_or_bad_token(
    pg_stack: Stack, header: str | None, code: str
) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in _routes():
        resp = httpx.request(method, pg_stack.url + _fill(path), headers=headers, timeout=30)
        assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:200])
        assert resp.json()["code"] == code, (method, path)
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_every_route_refuses_a_revoked_token(pg_stack: Stack, bob: dict) -> None:
    with pg_stack.client(bob["token"]["token"]) as client:
        created = client.post("/tokens", json={"name": "to-revoke"}).json()
    with pg_stack.client(created["token"]) as client:
        assert client.get("/users/me").status_code == 200
        assert client.delete(f"/tokens/{created['id']}").status_code == 204
    for method, path in _routes():
        resp = httpx.request(
            method,
            pg_stack.url + _fill(path),
            timeout=30,
            headers={"Authorization": f"Bearer {created['token']}"},
        )
        assert resp.status_code == 401, (method, path)
        assert resp.json()["code"] == "revoked_token"


def test_health_and_docs_need_no_token(pg_stack: Stack) -> None:
    for path in ("/api/v1/health", "/docs", "/openapi.json"):
        assert httpx.get(pg_stack.url + path).status_code == 200, path


def test_another_users_objects_answer_404_and_stay_out_of_lists(
    pg_stack: Stack, digits_dataset: dict, alice: dict, bob: dict, digits_zip: Any
) -> None:
    from tests.support import post_dataset, wait_for

    with pg_stack.client(alice["token"]["token"]) as a:
        resp = post_dataset(
            a,
            {"name": "alice-digits", "image_width": 8, "image_height": 8, "channels": 1},
            {"archive": ("d.zip", digits_zip.read_bytes(), "application/zip")},
        )
        ds = wait_for(a, f"/datasets/{resp.json()['id']}")
        job = a.post(
            "/jobs",
            json={
                "dataset_id": ds["id"],
                "name": "alice-job",
                "network": "lenet",
                "hyperparameters": {"epochs": 1},
            },
        ).json()["jobs"][0]
        wait_for(a, f"/jobs/{job['id']}", timeout=180)
    object_routes = [(m, p) for m, p in _routes() if "{dataset_id}" in p or "{job_id}" in p]
    assert len(object_routes) >= 10
    with pg_stack.client(bob["token"]["token"]) as b:
        for method, path in object_routes:
            url = (
                path.replace("/api/v1", "")
                .replace("{dataset_id}", ds["id"])
                .replace("{job_id}", job["id"])
                .replace("{split}", "train")
                .replace("{index}", "0")
            )
            kwargs: dict[str, Any] = {"params": {"true": 0, "pred": 0}}  # the cell route's
            if method in ("POST", "PATCH") and "{job_id}" in path:
                kwargs["json"] = {}
            resp = b.request(method, url, **kwargs)
            assert resp.status_code == 404, (method, url, resp.status_code, resp.text[:200])
        assert ds["id"] not in [d["id"] for d in b.get("/datasets").json()["items"]]
        assert job["id"] not in [j["id"] for j in b.get("/jobs").json()["items"]]
        # bob cannot train on alice's dataset or fine-tune from her job either
        assert (
            b.post(
                "/jobs", json={"dataset_id": ds["id"], "name": "x", "network": "lenet"}
            ).status_code
            == 404
        )
    with pg_stack.client() as admin:  # an admin sees everything
        assert admin.get(f"/datasets/{ds['id']}").status_code == 200
        assert job["id"] in [
            j["id"] for j in admin.get("/jobs", params={"per_page": 200}).json()["items"]
        ]


def test_only_admins_create_users(pg_stack: Stack, bob: dict) -> None:
    with pg_stack.client(bob["token"]["token"]) as b:
        assert b.post("/users", json={"name": "mallory"}).status_code == 403
        assert b.get("/users/me").json()["is_admin"] is False
