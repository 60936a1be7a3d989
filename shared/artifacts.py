"""Artifact storage behind one interface: the data folder (the default) or an S3-compatible bucket.

Keys are relative paths: `datasets/<id>/...`, `jobs/<id>/...`, `pretrained/<id>/...`, the layout
of the data folder. In the data folder a key *is* the file `data_dir/key`, so nothing is ever
copied: `fetch` returns the file itself and `put_file` renames a finished file into place. In a
bucket every object is written by one PUT of finished bytes, which S3 makes atomic (readers see
the old object or the new one); a dataset, which is many files, is published file by file with
its manifest last, and readers start from the manifest.

Hosts keep a cache under `data_dir/cache`: datasets by content hash (a host downloads a dataset
once, whatever its id, and training reads a local folder), other objects by key and ETag (a
checkpoint is downloaded again only when it changed).

Rows record where a file is as a *ref*: the absolute path in the data folder (as they always
have, so the local default is unchanged) or the key in a bucket. Every method takes refs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from shared import storage
from shared.errors import ServiceUnavailable
from shared.settings import Settings

log = logging.getLogger("digits.artifacts")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHUNK = 1024 * 1024
STALE_VERSION_SECONDS = 600.0


class StorageUnavailable(ServiceUnavailable):
    """The bucket cannot be reached or refused us (not a missing object): retry later."""

    code = "storage_unavailable"


class InvalidKey(ValueError):
    """A ref that names nothing in the storage (absolute outside it, `..`, empty parts)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size, and a version that changes with its content."""

    key: str
    size: int
    version: str


def check_key(key: str) -> str:
    """A key as the stores use it, or InvalidKey: relative, no `..`, `.` or empty parts."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        raise InvalidKey(f"not a storage key: {key[:200]!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKey(f"not a storage key: {key[:200]!r}")
    return key


class ArtifactStore:
    """What every store does; the two below differ only in where bytes live."""

    local: bool = True

    def key(self, ref: str) -> str:
        """The key a ref names (a row's path or a key), checked."""
        raise NotImplementedError

    def ref(self, key: str) -> str:
        """What a row records for this key."""
        raise NotImplementedError

    def path(self, ref: str) -> Path | None:
        """The file itself when the store is the local folder (None for a bucket)."""
        return None

    def put_bytes(self, ref: str, data: bytes) -> None:
        """Store finished bytes atomically."""
        raise NotImplementedError

    def put_file(self, ref: str, src: Path) -> None:
        """Store a finished local file; the local store renames it into place (src is gone)."""
        raise NotImplementedError

    def get_bytes(self, ref: str) -> bytes:
        """The whole object (FileNotFoundError when there is none)."""
        raise NotImplementedError

    def read_range(self, ref: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from `start` (b"" past the end)."""
        raise NotImplementedError

    def stat(self, ref: str) -> ObjectInfo:
        """Size and version of an object (FileNotFoundError when there is none)."""
        raise NotImplementedError

    def exists(self, ref: str) -> bool:
        """True when the object exists."""
        try:
            self.stat(ref)
        except (FileNotFoundError, InvalidKey):
            return False
        return True

    def fetch(self, ref: str) -> Path:
        """A local file holding the object: the file itself, or a cached download."""
        raise NotImplementedError

    def fetch_tree(self, prefix: str, dest: Path) -> Path:
        """A local folder holding every object under `prefix` (the local store's own folder)."""
        raise NotImplementedError

    def put_tree(self, prefix: str, folder: Path) -> None:
        """Store every file under `folder` as `prefix/<relative path>` (local: moved in)."""
        raise NotImplementedError

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/`."""
        raise NotImplementedError

    def delete(self, ref: str) -> None:
        """Remove one object if it exists."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix/`."""
        raise NotImplementedError

    def stream(self, ref: str) -> Iterator[bytes]:
        """The object's bytes in chunks (for responses)."""
        raise NotImplementedError


class LocalStore(ArtifactStore):
    """The data folder: a key is the file `root/key`; nothing is copied."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def key(self, ref: str) -> str:
        if os.path.isabs(ref):
            real = Path(os.path.realpath(ref))
            if real == self.root or self.root not in real.parents:
                raise InvalidKey("the path is outside the data directory")
            return real.relative_to(self.root).as_posix()
        return check_key(ref)

    def ref(self, key: str) -> str:
        return str(self.root / check_key(key))

    def path(self, ref: str) -> Path:
        return self.root / self.key(ref)

    def put_bytes(self, ref: str, data: bytes) -> None:
        storage.atomic_write(self.path(ref), data)

    def put_file(self, ref: str, src: Path) -> None:
        dst = self.path(ref)
        if Path(os.path.realpath(src)) == dst:
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)

    def get_bytes(self, ref: str) -> bytes:
        return self.path(ref).read_bytes()

    def read_range(self, ref: str, start: int, length: int) -> bytes:
        with open(self.path(ref), "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def stat(self, ref: str) -> ObjectInfo:
        key = self.key(ref)
        path = self.root / key
        if not path.is_file():
            raise FileNotFoundError(key)
        st = path.stat()
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def fetch(self, ref: str) -> Path:
        path = self.path(ref)
        if not path.exists():
            raise FileNotFoundError(self.key(ref))
        return path

    def fetch_tree(self, prefix: str, dest: Path) -> Path:
        return self.path(prefix)

    def put_tree(self, prefix: str, folder: Path) -> None:
        target = self.path(prefix)
        if Path(os.path.realpath(folder)) == target:
            return
        target.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            os.replace(item, target / item.name)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.path(prefix)
        found = []
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if path.is_file():
                st = path.stat()
                key = path.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}"))
        return found

    def delete(self, ref: str) -> None:
        self.path(ref).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        storage.remove_tree(self.path(prefix))

    def stream(self, ref: str) -> Iterator[bytes]:
        with open(self.path(ref), "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


class S3Store(ArtifactStore):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph, R2) through obstore, with a local cache."""

    local = False

    def __init__(self, settings: Settings) -> None:
        # imported here: the embedded default never loads the S3 client
        from obstore.store import S3Store as ObStore

        url = urlparse(settings.storage_url)
        if url.scheme != "s3" or not url.netloc:
            raise ValueError(f"DIGITS_STORAGE_URL must be s3://bucket/prefix, not {url.scheme!r}")
        self.bucket = url.netloc
        self.prefix = url.path.strip("/")
        config: dict[str, Any] = {}
        if settings.storage_endpoint:
            config["endpoint"] = settings.storage_endpoint
        if settings.storage_region:
            config["region"] = settings.storage_region
        if settings.storage_access_key_id:
            config["access_key_id"] = settings.storage_access_key_id
            config["secret_access_key"] = settings.storage_secret_access_key
        if settings.storage_endpoint.startswith("http://"):
            config["allow_http"] = True
        self.store = ObStore(
            self.bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]  # a TypedDict built key by key
            client_options={
                "connect_timeout": timedelta(seconds=5),
                "read_timeout": timedelta(seconds=60),  # a stalled transfer, not a long one
                "timeout": timedelta(seconds=settings.storage_timeout),
            },
            retry_config={
                "max_retries": 4,
                "retry_timeout": timedelta(seconds=30),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=4),
                    "base": 2,
                },
            },
        )
        self.cache = settings.resolved_cache_dir

    # -- refs ------------------------------------------------------------------------------
    def key(self, ref: str) -> str:
        if os.path.isabs(ref):
            raise InvalidKey("a path on a host is not in the bucket; rows record keys")
        return check_key(ref)

    def ref(self, key: str) -> str:
        return check_key(key)

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an obstore call; a missing object is FileNotFoundError, the rest unavailable."""
        from obstore.exceptions import NotFoundError

        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, NotFoundError):
            raise FileNotFoundError(key) from None
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("storage %s %s failed: %s", what, key, first[:300])
            raise StorageUnavailable(
                f"the artifact storage did not answer ({what}); retry shortly"
            ) from exc

    # -- objects ---------------------------------------------------------------------------
    def put_bytes(self, ref: str, data: bytes) -> None:
        import obstore

        key = self.key(ref)
        self._call("put", key, obstore.put, self.store, key, data, use_multipart=False)

    def put_file(self, ref: str, src: Path) -> None:
        import obstore

        key = self.key(ref)
        # a multipart upload (files over 5 MiB) is also atomic: the object appears complete
        self._call("put", key, obstore.put, self.store, key, Path(src))

    def get_bytes(self, ref: str) -> bytes:
        import obstore

        key = self.key(ref)
        result = self._call("get", key, obstore.get, self.store, key)
        return bytes(self._call("get", key, result.bytes))

    def read_range(self, ref: str, start: int, length: int) -> bytes:
        import obstore

        key = self.key(ref)
        size = self.stat(key).size
        if start >= size or length <= 0:
            return b""
        data = self._call(
            "get",
            key,
            obstore.get_range,
            self.store,
            key,
            start=start,
            end=min(size, start + length),
        )
        return bytes(data)

    def stat(self, ref: str) -> ObjectInfo:
        import obstore

        key = self.key(ref)
        meta = self._call("head", key, obstore.head, self.store, key)
        return ObjectInfo(key, int(meta["size"]), str(meta.get("e_tag") or meta["last_modified"]))

    def fetch(self, ref: str) -> Path:
        """The cached copy of the object's current version, downloaded if it changed."""
        key = self.key(ref)
        info = self.stat(key)
        tag = hashlib.sha256(info.version.encode()).hexdigest()[:16]
        folder = self.cache / "objects" / key
        path = folder / tag / PurePosixPath(key).name
        if path.is_file() and path.stat().st_size == info.size:
            return path
        self._download(key, path)
        # earlier versions are not asked for again; one a reader may still be opening stays
        cutoff = time.time() - STALE_VERSION_SECONDS
        for old in folder.iterdir():
            with contextlib.suppress(OSError):
                if old.name != tag and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
        return path

    def _download(self, key: str, dest: Path) -> str:
        """Stream an object into `dest` (temp + rename); returns its sha256."""
        import obstore

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as fh:
                result = self._call("get", key, obstore.get, self.store, key)
                for chunk in self._call("get", key, result.stream, CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def fetch_tree(self, prefix: str, dest: Path) -> Path:
        prefix = check_key(prefix)
        for info in self.list(prefix):
            self._download(info.key, dest / info.key[len(prefix) + 1 :])
        return dest

    def put_tree(self, prefix: str, folder: Path) -> None:
        prefix = check_key(prefix)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)

    def list(self, prefix: str) -> list[ObjectInfo]:
        import obstore

        prefix = check_key(prefix)

        def collect() -> list[ObjectInfo]:
            return [
                ObjectInfo(
                    str(meta["path"]),
                    int(meta["size"]),
                    str(meta.get("e_tag") or meta["last_modified"]),
                )
                for batch in obstore.list(self.store, prefix=prefix + "/")
                for meta in batch
            ]

        return sorted(self._call("list", prefix, collect), key=lambda info: info.key)

    def delete(self, ref: str) -> None:
        import obstore

        key = self.key(ref)
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, obstore.delete, self.store, key)

    def delete_prefix(self, prefix: str) -> None:
        import obstore

        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a request
            self._call("delete", prefix, obstore.delete, self.store, keys[start : start + 1000])

    def stream(self, ref: str) -> Iterator[bytes]:
        import obstore

        key = self.key(ref)
        result = self._call("get", key, obstore.get, self.store, key)
        yield from self._call("get", key, result.stream, CHUNK)


# -- the store of a deployment --------------------------------------------------------------


def get_store(settings: Settings) -> ArtifactStore:
    """The store the settings name (one per configuration and process)."""
    identity = (
        settings.storage_url,
        settings.storage_endpoint,
        settings.storage_region,
        settings.storage_access_key_id,
        settings.storage_secret_access_key,
        settings.storage_timeout,
        settings.resolved_data_dir,
        settings.resolved_cache_dir,
    )
    with _stores_lock:
        store = _stores.get(identity)
        if store is None:
            store = S3Store(settings) if settings.storage_url else LocalStore(identity[6])
            _stores[identity] = store
        return store


_stores: dict[tuple[Any, ...], ArtifactStore] = {}
_stores_lock = threading.Lock()


def dataset_prefix(dataset_id: uuid.UUID | str) -> str:
    """Where a dataset's files are."""
    return f"datasets/{dataset_id}"


def job_prefix(job_id: uuid.UUID | str) -> str:
    """Where a job's log, checkpoints, results and downloads are."""
    return f"jobs/{job_id}"


def pretrained_prefix(model_id: uuid.UUID | str) -> str:
    """Where a pretrained model's files are."""
    return f"pretrained/{model_id}"


def checkpoint_key(job_id: uuid.UUID | str, name: str) -> str:
    """The key of a job's checkpoint `name` (epoch-3, best, last)."""
    return f"{job_prefix(job_id)}/checkpoints/{name}.pt"


def remove(settings: Settings, prefix: str, local: Path) -> None:
    """Remove a dataset's, job's or model's files: the folder here, and its objects."""
    storage.remove_tree(local)
    store = get_store(settings)
    if not store.local:
        try:
            store.delete_prefix(prefix)
        except StorageUnavailable:  # its row is gone already: the objects are left over
            log.error("storage: could not remove %s/; its objects are left in the bucket", prefix)


def remove_job(settings: Settings, job_id: uuid.UUID) -> None:
    """Remove a job's files wherever they are."""
    remove(settings, job_prefix(job_id), storage.job_dir(settings, job_id))


def remove_dataset(settings: Settings, dataset_id: uuid.UUID) -> None:
    """Remove a dataset's files wherever they are (the host caches keep their copies)."""
    remove(settings, dataset_prefix(dataset_id), storage.dataset_dir(settings, dataset_id))


def remove_pretrained(settings: Settings, model_id: uuid.UUID) -> None:
    """Remove a pretrained model's files wherever they are."""
    remove(settings, pretrained_prefix(model_id), storage.pretrained_dir(settings, model_id))


# -- datasets: published with a manifest, cached by content ---------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish_dataset(store: ArtifactStore, dataset_id: uuid.UUID, folder: Path) -> dict[str, Any]:
    """Upload an imported dataset's files, then its manifest (readers look for it first).

    The manifest names each file with its size and sha256, and the dataset's content hash
    (of those), which keys the hosts' caches. Returns the manifest.
    """
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest = {"format": MANIFEST_FORMAT, "content": content, "files": files}
    prefix = dataset_prefix(dataset_id)
    for name in files:
        store.put_file(f"{prefix}/{name}", folder / name)
    store.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    return manifest


def dataset_cache_dir(settings: Settings, content: str) -> Path:
    """The cached copy of the dataset with this content hash, on this host."""
    return settings.resolved_cache_dir / "datasets" / content


def adopt_dataset(settings: Settings, manifest: dict[str, Any], folder: Path) -> Path:
    """Move a just-imported dataset into this host's cache (no download for local training)."""
    target = dataset_cache_dir(settings, str(manifest["content"]))
    if target.is_dir():
        storage.remove_tree(folder)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(folder, target)
    except OSError:  # another process got there first: theirs is the same content
        storage.remove_tree(folder)
    return target


def local_dataset(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """A local folder holding the dataset: its own folder here, or this host's cached copy.

    A bucket's dataset is downloaded once per host (checked against the manifest's sizes and
    hashes) into a temporary folder that is renamed into the cache only when complete.
    """
    store = get_store(settings)
    if store.local:
        return storage.dataset_dir(settings, dataset_id)
    prefix = dataset_prefix(dataset_id)
    manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
    target = dataset_cache_dir(settings, str(manifest["content"]))
    if target.is_dir():
        return target
    assert isinstance(store, S3Store)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        total = 0
        for name, entry in manifest["files"].items():
            check_key(name)
            digest = store._download(f"{prefix}/{name}", tmp / name)
            if digest != entry["sha256"]:
                raise StorageUnavailable(f"dataset {dataset_id}: {name} changed while downloading")
            total += int(entry["size"])
        try:
            os.replace(tmp, target)
        except OSError:  # a concurrent download on this host finished first
            storage.remove_tree(tmp)
    except BaseException:
        storage.remove_tree(tmp)
        raise
    log.info(
        "dataset=%s downloaded into the cache: %d files, %d bytes in %.2fs",
        dataset_id,
        len(manifest["files"]),
        total,
        time.perf_counter() - started,
    )
    return target


def dataset_size(store: ArtifactStore, dataset_id: uuid.UUID) -> int:
    """Bytes a published dataset uses in a bucket (its manifest's files)."""
    manifest = json.loads(store.get_bytes(f"{dataset_prefix(dataset_id)}/{MANIFEST}"))
    return sum(int(entry["size"]) for entry in manifest["files"].values())


# -- services that read and write through refs (the model service) ---------------------------


def fetch_any(store: ArtifactStore, ref: str, scratch: Path) -> Path:
    """A local file or folder holding what `ref` names: one object, or every object under it.

    The local store answers with its own path (which may not exist: the caller says so);
    a bucket's folder is downloaded into a fresh folder under `scratch` (the caller's to
    remove).
    """
    if store.local:
        path = store.path(ref)
        assert path is not None
        return path
    key = store.key(ref)
    try:
        return store.fetch(key)
    except FileNotFoundError:
        if not store.list(key):
            raise
    dest = scratch / uuid.uuid4().hex / PurePosixPath(key).name
    return store.fetch_tree(key, dest)


def output_path(store: ArtifactStore, ref: str, scratch: Path) -> Path:
    """Where to write what will be stored at `ref`: in place locally, else in `scratch`."""
    if store.local:
        path = store.path(ref)
        assert path is not None
        return path
    return scratch / uuid.uuid4().hex / PurePosixPath(store.key(ref)).name


def publish(store: ArtifactStore, ref: str, path: Path) -> None:
    """Store a finished file or folder written at `output_path(ref)` (locally: already there)."""
    if store.local and store.path(ref) == Path(os.path.realpath(path)):
        return
    if path.is_dir():
        store.put_tree(store.key(ref), path)
    else:
        store.put_file(ref, path)
    if not store.local:
        storage.remove_tree(path.parent)


def discard_scratch(path: Path, scratch: Path) -> None:
    """Remove a folder `fetch_any` or `output_path` made under `scratch` (never a cached file)."""
    if scratch in path.parents:
        storage.remove_tree(scratch / path.relative_to(scratch).parts[0])
