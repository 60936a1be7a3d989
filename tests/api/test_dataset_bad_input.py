"""Every bad dataset input gets a clear 4xx problem or an `error` reason, and writes nothing
outside that dataset's folder."""

from __future__ import annotations

import io
import socket
import tarfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import Stack, png_bytes, post_dataset, wait_for

OPTS = {"name": "bad", "image_width": 16, "image_height": 16, "channels": 1}


def _png(seed: int, size: tuple[int, int] = (16, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8))


def _good_members(classes: int = 3, per_class: int = 4) -> dict[str, bytes]:
    return {f"c{c}/img{i}.png": _png(c * 100 + i) for c in range(classes) for i in range(per_class)}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _datasets_on_disk(pg_env: dict[str, str]) -> set[str]:
    root = Path(pg_env["DIGITS_DATA_DIR"]) / "datasets"
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.fixture
def client(pg_stack: Stack):  # type: ignore[no-untyped-def]
    with pg_stack.client() as c:
        yield c


def _rejected(
    client: httpx.Client,
    pg_env: dict[str, str],
    name: str,
    data: bytes,
    code: str,
    status: int = 400,
) -> dict:
    before = _datasets_on_disk(pg_env)
    total = client.get("/datasets").json()["total"]
    resp = post_dataset(client, OPTS, {"archive": (name, data, "application/octet-stream")})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code
    assert body["detail"]
    assert _datasets_on_disk(pg_env) == before
    assert client.get("/datasets").json()["total"] == total
    return body


def test_member_with_dotdot_is_rejected(client, pg_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    members = {**_good_members(), "../../evil.png": _png(1)}
    body = _rejected(client, pg_env, "a.zip", _zip(members), "path_traversal")
    assert "evil.png" in body["detail"]
    assert not list(Path(pg_env["DIGITS_DATA_DIR"]).parent.glob("**/evil.png"))


def test_member_with_absolute_path_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    members = {**_good_members(), "/tmp/evil-abs.png": _png(2)}
    _rejected(client, pg_env, "a.tar.gz", _tar(members), "absolute_path")
    assert not Path("/tmp/evil-abs.png").exists()


def test_symlink_member_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    tar = _tar(_good_members(), {"c0/link.png": (tarfile.SYMTYPE, "/etc/passwd")})
    body = _rejected(client, pg_env, "a.tgz", tar, "link_member")
    assert "link.png" in body["detail"]


def test_hardlink_member_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    tar = _tar(_good_members(), {"c0/hard.png": (tarfile.LNKTYPE, "c0/img0.png")})
    _rejected(client, pg_env, "a.tgz", tar, "link_member")


def test_empty_archive_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    _rejected(client, pg_env, "empty.zip", _zip({}), "empty_archive")


def test_a_file_that_is_not_an_archive_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    _rejected(client, pg_env, "data.zip", b"this is not an archive at all", "not_an_archive")


def test_truncated_archive_is_rejected(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    data = _tar(_good_members())
    _rejected(client, pg_env, "cut.tgz", data[: len(data) // 2], "corrupt_archive")


def _import(client: httpx.Client, members: dict[str, bytes], **opts: object) -> dict:
    resp = post_dataset(
        client, {**OPTS, **opts}, {"archive": ("d.zip", _zip(members), "application/zip")}
    )
    assert resp.status_code == 202, resp.text
    return wait_for(client, f"/datasets/{resp.json()['id']}")


def test_non_image_file_is_skipped_and_counted(client) -> None:  # type: ignore[no-untyped-def]
    ds = _import(client, {**_good_members(), "c1/notes.txt": b"hello"})
    assert ds["status"] == "done", ds["error"]
    assert ds["num_images"] == 12
    assert ds["skipped"] == 1
    assert ds["skipped_samples"][0]["path"].endswith("notes.txt")
    assert "not an image" in ds["skipped_samples"][0]["reason"]


def test_corrupt_image_is_skipped_and_counted(client) -> None:  # type: ignore[no-untyped-def]
    corrupt = _png(9)[:40]
    ds = _import(client, {**_good_members(), "c2/broken.png": corrupt})
    assert ds["status"] == "done", ds["error"]
    assert ds["num_images"] == 12
    assert ds["skipped"] == 1
    assert ds["skipped_samples"][0]["path"].endswith("broken.png")


def test_image_bomb_is_skipped_before_decoding(client) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # 9 MP over a 4 MP limit
    assert len(buf.getvalue()) < 100_000
    ds = _import(client, {**_good_members(), "c0/bomb.png": buf.getvalue()})
    assert ds["status"] == "done", ds["error"]
    assert ds["skipped"] == 1
    assert "bomb" in ds["skipped_samples"][0]["reason"].lower()


def test_class_with_too_few_images_is_dropped(client) -> None:  # type: ignore[no-untyped-def]
    members = {**_good_members(), "tiny/only.png": _png(5)}
    ds = _import(client, members, min_per_class=2)
    assert ds["status"] == "done", ds["error"]
    assert ds["classes"] == ["c0", "c1", "c2"]
    assert ds["dropped_classes"] == ["tiny"]


def test_single_class_ends_in_error_with_a_reason(client, pg_env) -> None:  # type: ignore[no-untyped-def]
    ds = _import(client, _good_members(classes=1))
    assert ds["status"] == "error"
    assert "2 classes" in ds["error"]
    folder = Path(pg_env["DIGITS_DATA_DIR"]) / "datasets" / ds["id"]
    assert not folder.exists() or not any(folder.iterdir())


def test_too_few_images_everywhere_ends_in_error(client) -> None:  # type: ignore[no-untyped-def]
    ds = _import(client, _good_members(classes=3, per_class=1), min_per_class=2)
    assert ds["status"] == "error"
    assert ds["error"]


def test_upload_over_the_limit_is_refused_before_the_body_is_read(pg_stack: Stack) -> None:
    """The 413 comes back on the headers alone: nothing is parsed or spooled.

    Signed in: an anonymous request gets its 401 first, also before the body.
    """
    limit = 8 * 1024 * 1024
    token = pg_stack.token
    with socket.create_connection(("127.0.0.1", pg_stack.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        chunks = []
        while True:  # the answer may arrive in several segments; the server then closes
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "payload_too_large" in reply


def test_chunked_upload_over_the_limit_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    def body():  # type: ignore[no-untyped-def]
        chunk = b"x" * (1024 * 1024)
        for _ in range(10):
            yield chunk

    try:
        resp = client.post(
            "/datasets",
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    except httpx.HTTPError:
        pytest.skip("server closed the connection before the client finished sending")
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"


def test_import_path_outside_the_allowed_roots_is_forbidden(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    resp = post_dataset(client, {**OPTS, "train_path": str(tmp_path)})
    assert resp.status_code == 403
    assert resp.json()["code"] == "import_path_not_allowed"


def test_import_path_escaping_a_root_through_dotdot_is_forbidden(
    client,
    imports_root: Path,  # type: ignore[no-untyped-def]
) -> None:
    resp = post_dataset(client, {**OPTS, "train_path": str(imports_root / ".." / "..")})
    assert resp.status_code == 403


def test_unknown_option_is_rejected(client) -> None:  # type: ignore[no-untyped-def]
    resp = post_dataset(client, {**OPTS, "colour": "blue"})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["loc"][-1] == "colour"


def test_bad_resize_mode_and_split_are_rejected(client) -> None:  # type: ignore[no-untyped-def]
    assert post_dataset(client, {**OPTS, "resize_mode": "stretch"}).status_code == 422
    assert post_dataset(client, {**OPTS, "val_pct": 60, "test_pct": 40}).status_code == 422
    assert post_dataset(client, {**OPTS, "channels": 2}).status_code == 422


def test_missing_source_is_rejected(client) -> None:  # type: ignore[no-untyped-def]
    resp = post_dataset(client, OPTS)
    assert resp.status_code == 400
    assert resp.json()["code"] == "missing_source"


def test_server_folder_import_under_an_allowed_root(client, imports_root: Path) -> None:  # type: ignore[no-untyped-def]
    folder = imports_root / "flowers"
    for name, data in _good_members().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    resp = post_dataset(client, {**OPTS, "train_path": str(folder), "val_pct": 25})
    assert resp.status_code == 202, resp.text
    ds = wait_for(client, f"/datasets/{resp.json()['id']}")
    assert ds["status"] == "done", ds["error"]
    assert ds["num_images"] == 12
    assert (folder / "c0" / "img0.png").exists()  # the source is left alone


def test_textfile_method_with_labels_file(client) -> None:  # type: ignore[no-untyped-def]
    members = _good_members()
    lines = [f"{name} {int(name[1])}" for name in members]
    resp = client.post(
        "/datasets",
        data={k: str(v) for k, v in OPTS.items()},
        files={
            "archive": ("imgs.zip", _zip(members), "application/zip"),
            "train_list": ("train.txt", "\n".join(lines).encode(), "text/plain"),
            "labels": ("labels.txt", b"zero\none\ntwo\n", "text/plain"),
        },
    )
    assert resp.status_code == 202, resp.text
    ds = wait_for(client, f"/datasets/{resp.json()['id']}")
    assert ds["status"] == "done", ds["error"]
    assert ds["method"] == "textfile"
    assert ds["classes"] == ["zero", "one", "two"]
    assert ds["num_images"] == 12
