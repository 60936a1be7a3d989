"""Disk bombs: archives that are small on the wire and huge on disk are refused before they land.

Each attack is checked against tarfile/zipfile themselves first (they would expand it), then
inspect_archive and extract_archive must refuse it with a stable code while the destination
grows by under 50 MB, measured by sampling its size on disk (and the file system's free space)
while extraction runs.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.archives import (
    ArchiveLimits,
    UnsafeArchive,
    extract_archive,
    inspect_archive,
)
from shared.settings import Settings

GIB = 1024**3
MB = 1024**2
LIMITS = ArchiveLimits()  # the defaults: 1 GiB per file, 20 GiB in all, ratio 200
JPEG = b"\xff\xd8\xff\xe0" + b"fake image bytes " * 20

# ----------------------------------------------------------------------------- builders


def _checksum(header: bytearray) -> None:
    """Recompute a tar header block's checksum in place."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)


def _finish(body: bytes, path: Path, gz: bool) -> Path:
    """Pad like tar does (10,240-byte records) and write, gzipped or not."""
    data = body + bytes(2 * tarfile.BLOCKSIZE)
    data += bytes(-len(data) % tarfile.RECORDSIZE)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _ordinary_prefix() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in ("cats/1.jpg", "dogs/2.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(JPEG)
            tf.addfile(info, io.BytesIO(JPEG))
        end = tf.offset
    return buf.getvalue()[:end]


def gnu_sparse_tar(path: Path, gz: bool = False, realsize: int = GIB) -> Path:
    """Old GNU sparse (type 'S'): 512 stored bytes that tarfile expands to realsize."""
    info = tarfile.TarInfo("dogs/bomb.jpg")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = tarfile.BLOCKSIZE  # bytes stored
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # one data block at offset 0
    header[398:410] = tarfile.itn(tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    _checksum(header)
    return _finish(_ordinary_prefix() + bytes(header) + JPEG.ljust(512, b"\0"), path, gz)


def pax_sparse_tar(path: Path, version: str, gz: bool = False, realsize: int = GIB) -> Path:
    """PAX sparse member of GNU format 0.0, 0.1 or 1.0."""
    data = JPEG.ljust(tarfile.BLOCKSIZE, b"\0")
    if version == "0.0":
        headers = {
            "GNU.sparse.size": str(realsize),
            "GNU.sparse.numblocks": "1",
            "GNU.sparse.offset": "0",
            "GNU.sparse.numbytes": str(len(data)),
        }
        name = "dogs/bomb.jpg"
    elif version == "0.1":
        headers = {"GNU.sparse.size": str(realsize), "GNU.sparse.map": f"0,{len(data)}"}
        name = "dogs/bomb.jpg"
    else:  # 1.0: the map opens the member's data
        headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "dogs/bomb.jpg",
            "GNU.sparse.realsize": str(realsize),
        }
        data = f"1\n0\n{len(data)}\n".encode().ljust(tarfile.BLOCKSIZE, b"\0") + data
        name = "dogs/GNUSparseFile.0/bomb.jpg"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = headers
        tf.addfile(info, io.BytesIO(data))
        end = tf.offset
    return _finish(_ordinary_prefix() + buf.getvalue()[:end], path, gz)


def zip_of_many_small_bombs(path: Path, members: int = 1024, size: int = MB) -> Path:
    """members files of size zero bytes each, every one at (not over) the per-file ratio floor."""
    zeros = bytes(size)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("cats/1.jpg", JPEG)
        for i in range(members):
            zf.writestr(f"dogs/{i:04d}.jpg", zeros)
    return path


def zip_declaring(path: Path, size: int = GIB) -> Path:
    """A small zip whose one big member declares size bytes (in both headers)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/1.jpg", JPEG)
        zf.writestr("dogs/bomb.jpg", bytes(4 * MB))
    data = bytearray(buf.getvalue())
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.rfind(sig)
        data[pos + at : pos + at + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def zip_deflate_bomb(path: Path, size: int = GIB) -> Path:
    """One member of size zero bytes, deflated, streamed (about 1 MB on disk)."""
    chunk = bytes(16 * MB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("cats/1.jpg", JPEG)
        with zf.open("dogs/bomb.jpg", "w", force_zip64=True) as out:
            for _ in range(size // len(chunk)):
                out.write(chunk)
    return path


def tarfile_would_write(path: Path) -> int:
    """Bytes tarfile itself says the archive's members hold (sparse members at full size)."""
    with tarfile.open(path) as tf:
        return sum(m.size for m in tf.getmembers() if m.isreg())


def zipfile_would_write(path: Path) -> int:
    with zipfile.ZipFile(path) as zf:
        return sum(i.file_size for i in zf.infolist())


# ----------------------------------------------------------------------------- measuring


def allocated(root: Path) -> int:
    """Bytes of disk the files under root take (du, not their apparent sizes)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed by the undo meanwhile
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


@contextlib.contextmanager
def disk_watch(dest: Path) -> Iterator[dict[str, int]]:
    """Sample dest's size on disk and the free space every few ms; peaks in the dict."""
    seen = {"dest_peak": 0, "free_drop": 0}
    stat = os.statvfs(dest)
    free_before = stat.f_bavail * stat.f_frsize
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["dest_peak"] = max(seen["dest_peak"], allocated(dest))
            now = os.statvfs(dest)
            seen["free_drop"] = max(seen["free_drop"], free_before - now.f_bavail * now.f_frsize)
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        seen["dest_peak"] = max(seen["dest_peak"], allocated(dest))


# ----------------------------------------------------------------------------- the attacks

Build = Callable[[Path], Path]
TAR, ZIP = tarfile_would_write, zipfile_would_write
ATTACKS: dict[str, tuple[Build, str, Callable[[Path], int]]] = {
    "gnu-sparse.tar": (lambda p: gnu_sparse_tar(p), "sparse_member", TAR),
    "gnu-sparse.tar.gz": (lambda p: gnu_sparse_tar(p, gz=True), "sparse_member", TAR),
    "pax-0.0-sparse.tar": (lambda p: pax_sparse_tar(p, "0.0"), "sparse_member", TAR),
    "pax-0.1-sparse.tar": (lambda p: pax_sparse_tar(p, "0.1"), "sparse_member", TAR),
    "pax-1.0-sparse.tar": (lambda p: pax_sparse_tar(p, "1.0"), "sparse_member", TAR),
    "pax-1.0-sparse.tar.gz": (lambda p: pax_sparse_tar(p, "1.0", gz=True), "sparse_member", TAR),
    "many-1MiB-zeros.zip": (zip_of_many_small_bombs, "compression_ratio", ZIP),
    "declares-1GiB.zip": (zip_declaring, "compression_ratio", ZIP),
    "deflate-1GiB.zip": (zip_deflate_bomb, "compression_ratio", ZIP),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every attack archive, built once."""
    folder = tmp_path_factory.mktemp("bombs")
    return {name: build(folder / name) for name, (build, _, _) in ATTACKS.items()}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_attack_is_real(bombs: dict[str, Path], name: str) -> None:
    """tarfile/zipfile alone would write at least 1 GiB from a file of a few KB or MB."""
    path = bombs[name]
    would = ATTACKS[name][2](path)
    print(f"{name}: {path.stat().st_size:,} bytes would expand to {would:,}")
    assert would >= GIB
    assert path.stat().st_size < 2 * MB


@pytest.mark.parametrize("name", list(ATTACKS))
def test_inspect_refuses(bombs: dict[str, Path], name: str) -> None:
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(bombs[name], LIMITS)
    print(f"{name}: {err.value.code}: {err.value.message}")
    assert err.value.code == ATTACKS[name][1]
    assert "'dogs/" in err.value.message  # names the member


@pytest.mark.parametrize("name", list(ATTACKS))
def test_extract_refuses_and_the_disk_barely_grows(
    bombs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with disk_watch(dest) as seen, pytest.raises(UnsafeArchive) as err:
        extract_archive(bombs[name], dest, LIMITS)
    print(
        f"{name}: {err.value.code}; destination peaked at {seen['dest_peak'] / MB:.1f} MB, "
        f"free space dropped by at most {seen['free_drop'] / MB:.1f} MB (shared disk)"
    )
    assert err.value.code == ATTACKS[name][1]
    assert seen["dest_peak"] < 50 * MB
    assert list(dest.iterdir()) == []


def test_a_garbled_sparse_map_is_a_corrupt_archive(tmp_path: Path) -> None:
    """tarfile's own ValueError on a bad GNU.sparse.map is an UnsafeArchive, not a crash."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("dogs/bomb.jpg")
        info.size = len(JPEG)
        info.pax_headers = {"GNU.sparse.size": "99", "GNU.sparse.map": "zero,lots"}
        tf.addfile(info, io.BytesIO(JPEG))
    path = tmp_path / "garbled.tar"
    path.write_bytes(buf.getvalue())
    calls = (
        lambda: inspect_archive(path, LIMITS),
        lambda: extract_archive(path, tmp_path / "d", LIMITS),
    )
    for call in calls:
        with pytest.raises(UnsafeArchive) as err:
            call()
        assert err.value.code == "corrupt_archive"


def test_limits_are_required(bombs: dict[str, Path], tmp_path: Path) -> None:
    """No caller gets limits it did not choose: the service passes its settings' limits."""
    with pytest.raises(TypeError):
        inspect_archive(bombs["gnu-sparse.tar"])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        extract_archive(bombs["gnu-sparse.tar"], tmp_path)  # type: ignore[call-arg]


def test_limits_from_settings() -> None:
    settings = Settings(
        archive_max_members=7,
        archive_max_total_bytes=1000,
        archive_max_member_bytes=100,
        archive_max_expansion_ratio=3.5,
    )
    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(
        max_members=7, max_total_bytes=1000, max_member_bytes=100, max_ratio=3.5
    )
    assert ArchiveLimits.from_settings(Settings()) == ArchiveLimits()
