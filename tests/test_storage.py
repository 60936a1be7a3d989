"""Artifact storage: the data folder (no copies) and an S3 bucket on a real S3 protocol server
(moto's standalone server), then the whole service in S3 mode with no shared data folder."""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import artifacts
from shared.settings import Settings
from tests.s3server import MotoServer
from tests.support import Stack, free_port, post_dataset, submit, wait_for


def _report(what: str, **figures: Any) -> None:
    print(f"\n[storage] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _s3_settings(moto: MotoServer, bucket: str, data_dir: Path) -> Settings:
    env = moto.env(bucket)
    return Settings(
        data_dir=data_dir,
        storage_url=env["DIGITS_STORAGE_URL"],
        storage_endpoint=env["DIGITS_STORAGE_ENDPOINT"],
        storage_region=env["DIGITS_STORAGE_REGION"],
        storage_access_key_id=env["DIGITS_STORAGE_ACCESS_KEY_ID"],
        storage_secret_access_key=env["DIGITS_STORAGE_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def s3(moto: MotoServer, tmp_path: Path) -> tuple[Settings, artifacts.S3Store]:
    bucket = f"unit-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    settings = _s3_settings(moto, bucket, tmp_path / "data")
    store = artifacts.get_store(settings)
    assert isinstance(store, artifacts.S3Store)
    return settings, store


def _dataset_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train_images.npy").write_bytes(os.urandom(300_000))
    (root / "train_labels.npy").write_bytes(os.urandom(1000))
    (root / "labels.txt").write_text("a\nb\n")
    return root


# -- the data folder ----------------------------------------------------------------------


def test_the_local_store_hands_out_the_files_themselves(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = artifacts.get_store(settings)
    assert isinstance(store, artifacts.LocalStore)
    store.put_bytes("jobs/j/results.jsonl", b"{}\n")
    path = store.fetch("jobs/j/results.jsonl")
    assert path == tmp_path.resolve() / "jobs/j/results.jsonl"  # no copy, no cache
    assert store.ref("jobs/j/x.pt") == str(tmp_path.resolve() / "jobs/j/x.pt")
    assert store.exists(str(path))  # rows keep recording absolute paths in the data folder
    src = tmp_path / "elsewhere.bin"
    src.write_bytes(b"x" * 10)
    inode = src.stat().st_ino
    store.put_file("jobs/j/out.bin", src)
    assert (tmp_path / "jobs/j/out.bin").stat().st_ino == inode  # renamed into place
    assert not (tmp_path / "cache").exists()
    assert artifacts.local_dataset(settings, uuid.UUID(int=1)) == (
        tmp_path.resolve() / "datasets" / str(uuid.UUID(int=1))
    )


@pytest.mark.parametrize(
    "ref", ["../etc/passwd", "jobs/../../x", "/etc/passwd", "jobs//x", "", "a\x00b", "./x"]
)
def test_refs_outside_the_storage_are_refused(tmp_path: Path, ref: str) -> None:
    with pytest.raises(artifacts.InvalidKey):
        artifacts.LocalStore(tmp_path).key(ref)


def test_a_bucket_refuses_host_paths_and_dot_dot(s3: tuple[Settings, artifacts.S3Store]) -> None:
    _, store = s3
    for ref in ("/data/jobs/x/best.pt", "jobs/../x", "jobs/x/"):
        with pytest.raises(artifacts.InvalidKey):
            store.key(ref)
    assert not store.exists("/data/jobs/x/best.pt")


# -- a bucket --------------------------------------------------------------------------------


def test_objects_round_trip_with_ranges_versions_and_listing(
    s3: tuple[Settings, artifacts.S3Store],
) -> None:
    _, store = s3
    store.put_bytes("jobs/j/job.log", b"line one\nline two\n")
    assert store.get_bytes("jobs/j/job.log") == b"line one\nline two\n"
    assert store.read_range("jobs/j/job.log", 9, 100) == b"line two\n"
    assert store.read_range("jobs/j/job.log", 500, 10) == b""
    first = store.stat("jobs/j/job.log")
    store.put_bytes("jobs/j/job.log", b"changed")
    assert store.stat("jobs/j/job.log").version != first.version
    store.put_bytes("jobs/j/checkpoints/best.pt", b"w")
    assert [i.key for i in store.list("jobs/j")] == ["jobs/j/checkpoints/best.pt", "jobs/j/job.log"]
    store.delete_prefix("jobs/j")
    assert store.list("jobs/j") == []
    with pytest.raises(FileNotFoundError):
        store.get_bytes("jobs/j/job.log")


def test_fetch_downloads_a_version_once_and_again_when_it_changes(
    s3: tuple[Settings, artifacts.S3Store],
) -> None:
    _, store = s3
    store.put_bytes("jobs/j/checkpoints/best.pt", b"v1" * 1000)
    a = store.fetch("jobs/j/checkpoints/best.pt")
    mtime = a.stat().st_mtime_ns
    b = store.fetch("jobs/j/checkpoints/best.pt")
    assert a == b
    assert b.stat().st_mtime_ns == mtime
    assert a.name == "best.pt"
    store.put_bytes("jobs/j/checkpoints/best.pt", b"v2" * 1000)
    c = store.fetch("jobs/j/checkpoints/best.pt")
    assert c != a
    assert c.read_bytes() == b"v2" * 1000


def test_a_large_file_goes_up_in_parts_and_comes_back_whole(
    s3: tuple[Settings, artifacts.S3Store], tmp_path: Path
) -> None:
    _, store = s3
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))  # over obstore's 5 MiB part size
    started = time.perf_counter()
    store.put_file("jobs/j/big.bin", src)
    up = time.perf_counter() - started
    assert src.exists()  # a bucket uploads; the caller's file stays
    started = time.perf_counter()
    back = store.fetch("jobs/j/big.bin")
    down = time.perf_counter() - started
    assert back.read_bytes() == src.read_bytes()
    _report("12 MiB object", upload_s=round(up, 3), download_s=round(down, 3))


def test_a_dataset_is_invisible_until_its_manifest_is_published(
    s3: tuple[Settings, artifacts.S3Store], tmp_path: Path
) -> None:
    settings, store = s3
    dataset_id = uuid.uuid4()
    folder = _dataset_folder(tmp_path / "ds")
    prefix = artifacts.dataset_prefix(dataset_id)
    for path in folder.iterdir():  # every file, but not yet the manifest: a half publication
        store.put_file(f"{prefix}/{path.name}", path)
    with pytest.raises(FileNotFoundError):
        artifacts.local_dataset(settings, dataset_id)
    manifest = artifacts.publish_dataset(store, dataset_id, folder)
    local = artifacts.local_dataset(settings, dataset_id)
    assert local.name == manifest["content"]
    assert sorted(p.name for p in local.iterdir()) == sorted(manifest["files"])


def test_a_host_downloads_a_dataset_once_keyed_by_its_content(
    s3: tuple[Settings, artifacts.S3Store], tmp_path: Path
) -> None:
    settings, store = s3
    first, second = uuid.uuid4(), uuid.uuid4()
    folder = _dataset_folder(tmp_path / "ds")
    artifacts.publish_dataset(store, first, folder)
    artifacts.publish_dataset(store, second, folder)  # the same content under another id
    started = time.perf_counter()
    local = artifacts.local_dataset(settings, first)
    cold = time.perf_counter() - started
    # the data objects may vanish now: nothing but the manifest is read again
    for info in store.list(artifacts.dataset_prefix(first)):
        if not info.key.endswith(artifacts.MANIFEST):
            store.delete(info.key)
    started = time.perf_counter()
    assert artifacts.local_dataset(settings, first) == local
    assert artifacts.local_dataset(settings, second) == local
    warm = time.perf_counter() - started
    caches = list((settings.resolved_cache_dir / "datasets").iterdir())
    assert caches == [local]
    _report("dataset cache", cold_s=round(cold, 4), warm_two_ids_s=round(warm, 4))


def test_a_download_that_does_not_match_the_manifest_leaves_no_cache(
    s3: tuple[Settings, artifacts.S3Store], tmp_path: Path
) -> None:
    settings, store = s3
    dataset_id = uuid.uuid4()
    artifacts.publish_dataset(store, dataset_id, _dataset_folder(tmp_path / "ds"))
    store.put_bytes(f"{artifacts.dataset_prefix(dataset_id)}/labels.txt", b"tampered\n")
    with pytest.raises(artifacts.StorageUnavailable):
        artifacts.local_dataset(settings, dataset_id)
    assert list((settings.resolved_cache_dir / "datasets").iterdir()) == []


def test_an_unreachable_bucket_is_storage_unavailable_not_missing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://nowhere/x",
        storage_endpoint=f"http://127.0.0.1:{free_port()}",
        storage_region="us-east-1",
        storage_access_key_id="a",
        storage_secret_access_key="b",
    )
    store = artifacts.get_store(settings)
    started = time.perf_counter()
    with pytest.raises(artifacts.StorageUnavailable) as info:
        store.get_bytes("jobs/j/job.log")
    assert info.value.status == 503
    _report("unreachable bucket", seconds_to_503=round(time.perf_counter() - started, 2))


# -- the whole service on a bucket, each process with its own data folder --------------------


@pytest.fixture(scope="module")
def s3_stack(
    moto: MotoServer,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """API, model service, a dataset worker and a training worker, sharing only PostgreSQL,
    Redis and the bucket: each has a data folder of its own."""
    from shared import migrate
    from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database

    bucket = f"stack-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    db = create_pg_database()
    migrate.upgrade(Settings(database_url=db))
    logs = tmp_path_factory.mktemp("logs-s3")
    model_url = f"http://127.0.0.1:{free_port()}"

    def env(name: str) -> dict[str, str]:
        return {
            **os.environ,
            **moto.env(bucket),
            "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp(f"data-{name}")),
            "DIGITS_DATABASE_URL": db,
            "DIGITS_BROKER_URL": REDIS_URL,
            "DIGITS_BROKER_PREFIX": f"{redis_prefix}s3-",
            "DIGITS_MODEL_SERVER_URL": model_url,
            "DIGITS_LOG_LEVEL": "INFO",
        }

    api = Stack(env=env("api"), logs=logs)
    others: list[Stack] = []
    try:
        api.create_admin()
        api.start_api()
        for name in ("model", "cpu", "train"):
            others.append(Stack(env=env(name), logs=logs, port=api.port, token=api.token))
        others[0].start_model_server()
        others[1].start_worker("s3-cpu", "--queues", "cpu")
        others[2].start_worker("s3-train", "--cpu")
        yield {
            "api": api,
            "bucket": bucket,
            "moto": moto,
            "dirs": [api.env, *(o.env for o in others)],
        }
    finally:
        for stack in [*others, api]:
            stack.stop()
        drop_pg_database(db)


def _objects(moto: MotoServer, bucket: str, prefix: str) -> list[str]:
    settings = _s3_settings(moto, bucket, Path("/nonexistent-data-dir"))
    return [i.key for i in artifacts.get_store(settings).list(prefix)]


def test_the_service_runs_on_a_bucket_with_no_shared_data_folder(
    s3_stack: dict[str, Any], digits_zip: Path, tmp_path: Path
) -> None:
    api: Stack = s3_stack["api"]
    figures: dict[str, Any] = {}
    with api.client() as client:
        started = time.perf_counter()
        resp = post_dataset(
            client,
            {
                "name": "digits-s3",
                "image_width": 16,
                "image_height": 16,
                "channels": 1,
                "val_pct": 25,
                "seed": 1,
            },
            {"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        dataset = wait_for(client, f"/datasets/{resp.json()['id']}")
        assert dataset["status"] == "done", dataset
        figures["import_s"] = round(time.perf_counter() - started, 2)
        keys = _objects(s3_stack["moto"], s3_stack["bucket"], f"datasets/{dataset['id']}")
        assert any(k.endswith("manifest.json") for k in keys)
        assert not any("/uploads/" in k for k in keys)  # the upload is gone once imported
        assert client.get(f"/datasets/{dataset['id']}/mean.png").content[:4] == b"\x89PNG"
        sample = client.get(f"/datasets/{dataset['id']}/samples", params={"per_page": 2}).json()
        assert client.get(sample["items"][0]["image_url"]).content[:4] == b"\x89PNG"

        started = time.perf_counter()
        job = submit(
            client,
            {
                "dataset_id": dataset["id"],
                "name": "lenet-s3",
                "network": "lenet",
                "hyperparameters": {
                    "epochs": 2,
                    "batch_size": 32,
                    "learning_rate": 0.05,
                    "seed": 3,
                },
            },
        )[0]
        job = wait_for(client, f"/jobs/{job['id']}", timeout=300)
        assert job["status"] == "done", job
        figures["train_s"] = round(time.perf_counter() - started, 2)
        checkpoints = {c["name"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()}
        assert {"best", "last", "epoch-1", "epoch-2"} <= checkpoints
        log_text = client.get(f"/jobs/{job['id']}/logs").text
        assert "val.accuracy" in log_text
        tail = client.get(f"/jobs/{job['id']}/logs", params={"offset": 10})
        assert int(tail.headers["X-Log-Offset"]) == 10 + len(tail.content)

        pngs = [client.get(i["image_url"]).content for i in sample["items"]]
        started = time.perf_counter()
        resp = client.post(
            f"/jobs/{job['id']}/classify",
            files=[("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
        )
        assert resp.status_code == 200, resp.text
        figures["first_classify_ms"] = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        resp = client.post(
            f"/jobs/{job['id']}/classify", files=[("images", ("0.png", pngs[0], "image/png"))]
        )
        figures["warm_classify_ms"] = round((time.perf_counter() - started) * 1000, 1)
        assert resp.json()["predictions"][0]["top"]

        started = time.perf_counter()
        resp = client.get(f"/jobs/{job['id']}/download", params={"export": "torchscript"})
        assert resp.status_code == 200, resp.text
        figures["download_export_s"] = round(time.perf_counter() - started, 2)
        with tarfile.open(fileobj=io.BytesIO(resp.content)) as tf:
            names = set(tf.getnames())
        assert {"info.json", "weights.safetensors", "model.torchscript.pt"} <= names
        again = client.get(f"/jobs/{job['id']}/download", params={"export": "torchscript"})
        assert again.content == resp.content  # the stored download, not a new export

        evaluation = client.post(f"/jobs/{job['id']}/evaluate", data={"split": "val"})
        assert evaluation.status_code == 202, evaluation.text
        done = wait_for(client, f"/jobs/{evaluation.json()['id']}", timeout=120)
        assert done["status"] == "done", done
        results = client.get(f"/jobs/{done['id']}/results").json()
        assert results["top1"] == pytest.approx(job["last"]["val.accuracy"]["value"], abs=1e-6)
        cell = client.get(f"/jobs/{done['id']}/results/cell", params={"true": 0, "pred": 0})
        assert cell.status_code == 200
        assert cell.json()["total"] > 0

        many = [("images", (f"{i}.png", pngs[i % 2], "image/png")) for i in range(40)]
        infer = client.post(f"/jobs/{job['id']}/classify", files=many)
        assert infer.status_code == 202, infer.text
        done = wait_for(client, f"/jobs/{infer.json()['id']}", timeout=120)
        assert done["status"] == "done", done
        assert client.get(f"/jobs/{done['id']}/results").json()["total"] == 40

        model = client.post(f"/jobs/{job['id']}/pretrained", json={"name": "from s3"})
        assert model.status_code == 201, model.text
        upload = client.post(
            "/pretrained-models", files={"archive": ("m.tar.gz", resp.content, "application/gzip")}
        )
        assert upload.status_code == 201, upload.text
        tuned = submit(
            client,
            {
                "dataset_id": dataset["id"],
                "name": "tuned-s3",
                "network": {"kind": "pretrained", "model_id": upload.json()["id"]},
                "hyperparameters": {"epochs": 1, "batch_size": 32, "learning_rate": 0.01},
            },
        )[0]
        tuned = wait_for(client, f"/jobs/{tuned['id']}", timeout=300)
        assert tuned["status"] == "done", tuned
        assert "initialised from init.pt" in client.get(f"/jobs/{tuned['id']}/logs").text

        assert _objects(s3_stack["moto"], s3_stack["bucket"], f"jobs/{job['id']}")
        assert client.delete(f"/jobs/{tuned['id']}").status_code == 204
        assert _objects(s3_stack["moto"], s3_stack["bucket"], f"jobs/{tuned['id']}") == []
    # no process wrote another's folder: the API's holds no checkpoint, the trainer's no result
    api_dir, _, _, train_dir = (Path(e["DIGITS_DATA_DIR"]) for e in s3_stack["dirs"])
    assert not list(api_dir.rglob("*.pt"))
    assert not list(train_dir.rglob("results.jsonl"))
    assert not (train_dir / "jobs" / job["id"]).exists()  # scratch, removed after the job
    cached = list((train_dir / "cache" / "datasets").iterdir())
    assert len(cached) == 1  # two trainings on one dataset: one download
    _report("service on a bucket", **figures)
