"""The UI's files from memory: what they answer, and what they refuse."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.routers.ui import UIAssets

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _app(root: Path) -> FastAPI:
    app = FastAPI()
    app.mount("/ui", UIAssets(root), name="ui")
    return app


async def test_assets_revalidate_compress_once_and_follow_an_edit(tmp_path: Path) -> None:
    root = tmp_path / "ui"
    (root / "app").mkdir(parents=True)
    script = root / "app" / "main.js"
    script.write_text("export const a = 1;\n" * 200)
    (tmp_path / "secret.txt").write_text("not served")
    (root / "out").symlink_to(tmp_path)
    transport = httpx.ASGITransport(app=_app(root))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        plain = await client.get("/ui/app/main.js", headers={"Accept-Encoding": "identity"})
        zipped = await client.get("/ui/app/main.js", headers={"Accept-Encoding": "gzip"})
        again = await client.get(
            "/ui/app/main.js", headers={"If-None-Match": plain.headers["etag"]}
        )
        head = await client.head("/ui/app/main.js", headers={"Accept-Encoding": "identity"})
        script.write_text("export const a = 2;\n")
        os.utime(script, ns=(1, 1))  # another mtime for sure
        edited = await client.get(
            "/ui/app/main.js", headers={"If-None-Match": plain.headers["etag"]}
        )
        refused = {
            path: (await client.get(path)).status_code
            for path in (
                "/ui/missing.js",
                "/ui/app",
                "/ui/../secret.txt",
                "/ui/out/secret.txt",
                "/ui/%2e%2e/secret.txt",
                "/ui/.hidden",
            )
        }
        post = await client.post("/ui/app/main.js")
    print(
        f"ASSETS {len(plain.content)} B plain, {zipped.headers['content-length']} B gzipped; "
        f"refused {refused}"
    )
    assert plain.status_code == 200
    assert plain.headers["cache-control"] == "no-cache"
    assert "javascript" in plain.headers["content-type"]
    assert "script-src 'self'" in plain.headers["content-security-policy"]
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(plain.content) / 10
    assert zipped.content == plain.content  # httpx decoded it: the same bytes
    assert plain.content == ("export const a = 1;\n" * 200).encode()
    assert again.status_code == 304
    assert again.content == b""
    assert head.status_code == 200
    assert head.content == b""
    assert edited.status_code == 200
    assert edited.text == "export const a = 2;\n"
    assert edited.headers["etag"] != plain.headers["etag"]
    assert set(refused.values()) == {404}, refused
    assert post.status_code == 405
