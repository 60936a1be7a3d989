"""Tests for shared.archives: detection, inspection and safe extraction of dataset uploads."""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.archives import (
    CODES,
    ArchiveInfo,
    ArchiveLimits,
    UnsafeArchive,
    detect_kind,
    extract_archive,
    inspect_archive,
)
from tests.shared.test_archive_bombs import gnu_sparse_tar

JPEG = b"\xff\xd8\xff\xe0" + b"fake image bytes " * 20

# --------------------------------------------------------------------------- builders


def write_zip(
    path: Path,
    entries: list[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Write a zip holding the given (name or ZipInfo, data) entries."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def tar_file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    """A regular tar member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A tar member of a non-regular type (dir, link, fifo, device)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755
    return info, b""


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]], gz: bool = False) -> Path:
    """Write a tar (or tar.gz) holding the given members."""
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def patch_zip_member(
    data: bytes, name: str, *, flag: int = 0, unflag: int = 0, size: int | None = None
) -> bytes:
    """Set/clear flag bits and/or the declared uncompressed size of one member, in both headers."""
    buf = bytearray(data)
    encoded = name.encode()
    for sig, flag_at, size_at, name_len_at, name_at in (
        (b"PK\x03\x04", 6, 22, 26, 30),
        (b"PK\x01\x02", 8, 24, 28, 46),
    ):
        pos = buf.find(sig)
        while pos >= 0:
            (name_len,) = struct.unpack_from("<H", buf, pos + name_len_at)
            if bytes(buf[pos + name_at : pos + name_at + name_len]) == encoded:
                (flags,) = struct.unpack_from("<H", buf, pos + flag_at)
                struct.pack_into("<H", buf, pos + flag_at, (flags | flag) & ~unflag)
                if size is not None:
                    struct.pack_into("<I", buf, pos + size_at, size)
                break
            pos = buf.find(sig, pos + 1)
        else:
            raise AssertionError(f"{name} not found after {sig!r}")
    return bytes(buf)


def good_entries() -> dict[str, bytes]:
    """Files of a small two-class dataset."""
    return {
        "cats/1.jpg": JPEG + b"1",
        "cats/2.jpg": JPEG + b"2",
        "dogs/3.jpg": JPEG + b"3",
    }


def good_tar_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    """Tar members of the small dataset, with folder entries and executable modes."""
    entries = [tar_entry("cats", tarfile.DIRTYPE), tar_entry("dogs", tarfile.DIRTYPE)]
    entries += [tar_file(name, data, mode=0o4755) for name, data in good_entries().items()]
    return entries


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> file bytes (None for folders) of everything under root."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def snapshot_outside(tmp_path: Path, dest: Path) -> tuple[list[str], dict[str, bytes | None]]:
    """Listing of the parent tmp dir plus everything under tmp_path except dest."""
    listing = sorted(os.listdir(tmp_path.parent))
    inside = {k: v for k, v in tree(tmp_path).items() if not Path(k).is_relative_to("work/dest")}
    return listing, inside


# --------------------------------------------------------------------------- hostile cases

Case = Callable[[Path], tuple[Path, ArchiveLimits]]
DEFAULT = ArchiveLimits()


def case_not_an_archive(tmp: Path) -> tuple[Path, ArchiveLimits]:
    path = tmp / "upload.zip"
    path.write_bytes(b"just some text, named like a zip\n" * 50)
    return path, DEFAULT


def case_corrupt_archive(tmp: Path) -> tuple[Path, ArchiveLimits]:
    noise = random.Random(7).randbytes(64 * 1024)
    data = write_zip(tmp / "full.zip", [("cats/1.jpg", noise), ("dogs/2.jpg", noise)]).read_bytes()
    path = tmp / "upload.zip"
    path.write_bytes(data[: len(data) // 2])
    return path, DEFAULT


def case_empty_archive(tmp: Path) -> tuple[Path, ArchiveLimits]:
    return write_zip(tmp / "upload.zip", [("cats/", b""), ("dogs/", b"")]), DEFAULT


def case_path_traversal(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [*good_entries().items(), ("cats/../../evil.txt", b"pwned")]
    return write_zip(tmp / "upload.zip", entries), DEFAULT


def case_absolute_path(tmp: Path) -> tuple[Path, ArchiveLimits]:
    # Absolute, but inside tmp: if it were ever written, the snapshot would show it.
    entries = [*good_tar_entries(), tar_file(f"{tmp}/evil.txt", b"pwned")]
    return write_tar(tmp / "upload.tar", entries), DEFAULT


def case_link_member(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [
        *good_tar_entries(),
        tar_entry("cats/escape", tarfile.SYMTYPE, linkname=str(tmp)),
        tar_file("cats/escape/evil.txt", b"pwned"),
    ]
    return write_tar(tmp / "upload.tar", entries), DEFAULT


def case_special_file(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [*good_tar_entries(), tar_entry("cats/pipe", tarfile.FIFOTYPE)]
    return write_tar(tmp / "upload.tar", entries), DEFAULT


def case_too_many_members(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [(f"cats/{i}.jpg", JPEG) for i in range(5)]
    return write_zip(tmp / "upload.zip", entries), ArchiveLimits(max_members=3)


def case_too_large(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [*good_tar_entries(), tar_file("dogs/big.jpg", b"\x01" * 5000)]
    return write_tar(tmp / "upload.tar", entries), ArchiveLimits(max_member_bytes=4096)


def case_compression_ratio(tmp: Path) -> tuple[Path, ArchiveLimits]:
    entries = [*good_entries().items(), ("dogs/bomb.jpg", bytes(50 * 1024**2))]
    return write_zip(tmp / "upload.zip", entries), DEFAULT


def case_nested_archive(tmp: Path) -> tuple[Path, ArchiveLimits]:
    inner = write_zip(tmp / "inner.zip", list(good_entries().items())).read_bytes()
    entries = [*good_entries().items(), ("dogs/more.zip", inner)]
    return write_zip(tmp / "upload.zip", entries), DEFAULT


def case_encrypted_member(tmp: Path) -> tuple[Path, ArchiveLimits]:
    data = write_zip(tmp / "plain.zip", list(good_entries().items())).read_bytes()
    path = tmp / "upload.zip"
    path.write_bytes(patch_zip_member(data, "dogs/3.jpg", flag=0x1))
    return path, DEFAULT


def case_sparse_member(tmp: Path) -> tuple[Path, ArchiveLimits]:
    return gnu_sparse_tar(tmp / "upload.tar", realsize=10 * 1024**2), DEFAULT


HOSTILE: dict[str, Case] = {
    "not_an_archive": case_not_an_archive,
    "corrupt_archive": case_corrupt_archive,
    "empty_archive": case_empty_archive,
    "path_traversal": case_path_traversal,
    "absolute_path": case_absolute_path,
    "link_member": case_link_member,
    "special_file": case_special_file,
    "too_many_members": case_too_many_members,
    "too_large": case_too_large,
    "compression_ratio": case_compression_ratio,
    "nested_archive": case_nested_archive,
    "encrypted_member": case_encrypted_member,
    "sparse_member": case_sparse_member,
}


def test_every_code_has_a_case() -> None:
    assert set(HOSTILE) == CODES


@pytest.mark.parametrize("code", list(HOSTILE))
def test_inspect_rejects(tmp_path: Path, code: str) -> None:
    path, limits = HOSTILE[code](tmp_path)
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(path, limits)
    assert err.value.code == code
    assert str(err.value) == err.value.message
    if code not in ("not_an_archive", "corrupt_archive", "empty_archive", "too_many_members"):
        assert "'" in err.value.message  # names the offending member


@pytest.mark.parametrize("code", list(HOSTILE))
def test_extract_rejects_and_writes_nothing(tmp_path: Path, code: str) -> None:
    path, limits = HOSTILE[code](tmp_path)
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_bytes(b"already here")
    before = snapshot_outside(tmp_path, dest)
    with pytest.raises(UnsafeArchive) as err:
        extract_archive(path, dest, limits)
    assert err.value.code == code
    assert tree(dest) == {"keep.txt": b"already here"}
    assert snapshot_outside(tmp_path, dest) == before


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../evil.txt", "path_traversal"),
        ("cats/..\\..\\evil.txt", "path_traversal"),
        ("/evil.txt", "absolute_path"),
        ("\\evil.txt", "absolute_path"),
        ("C:\\evil.txt", "absolute_path"),
        ("c:evil.txt", "absolute_path"),
    ],
)
def test_zip_names(tmp_path: Path, name: str, code: str) -> None:
    path = write_zip(tmp_path / "a.zip", [("cats/1.jpg", JPEG), (name, b"pwned")])
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(path, DEFAULT)
    assert err.value.code == code
    assert name in err.value.message


def test_zip_symlink_and_fifo(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("cats/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = write_zip(tmp_path / "a.zip", [("cats/1.jpg", JPEG), (link, b"/etc/passwd")])
    with pytest.raises(UnsafeArchive, match=r"link\.jpg") as err:
        extract_archive(path, tmp_path / "dest", DEFAULT)
    assert err.value.code == "link_member"
    fifo = zipfile.ZipInfo("cats/pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    path = write_zip(tmp_path / "b.zip", [("cats/1.jpg", JPEG), (fifo, b"")])
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(path, DEFAULT)
    assert err.value.code == "special_file"
    assert tree(tmp_path / "dest") == {}


def test_tar_hardlink_and_device(tmp_path: Path) -> None:
    hard = [*good_tar_entries(), tar_entry("cats/h.jpg", tarfile.LNKTYPE, "cats/1.jpg")]
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(write_tar(tmp_path / "a.tar", hard), DEFAULT)
    assert err.value.code == "link_member"
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        dev = [*good_tar_entries(), tar_entry("cats/dev", kind)]
        with pytest.raises(UnsafeArchive) as err:
            inspect_archive(write_tar(tmp_path / "b.tar", dev), DEFAULT)
        assert err.value.code == "special_file"


def test_too_large_total(tmp_path: Path) -> None:
    entries = [(f"cats/{i}.jpg", b"\x02" * 1000) for i in range(5)]
    path = write_zip(tmp_path / "a.zip", entries)
    limits = ArchiveLimits(max_total_bytes=3500)
    for call in (
        lambda: inspect_archive(path, limits),
        lambda: extract_archive(path, tmp_path / "d", limits),
    ):
        with pytest.raises(UnsafeArchive, match=r"cats/3\.jpg") as err:
            call()
        assert err.value.code == "too_large"
    assert tree(tmp_path / "d") == {}


def test_too_many_members_tar(tmp_path: Path) -> None:
    entries = [tar_file(f"cats/{i}.jpg", JPEG) for i in range(5)]
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(
            write_tar(tmp_path / "a.tar.gz", entries, gz=True), ArchiveLimits(max_members=4)
        )
    assert err.value.code == "too_many_members"


def test_tar_gz_bomb(tmp_path: Path) -> None:
    entries = [*good_tar_entries(), tar_file("dogs/bomb.jpg", bytes(5 * 1024**2))]
    path = write_tar(tmp_path / "a.tgz", entries, gz=True)
    assert detect_kind(path) == "tar.gz"
    for call in (
        lambda: inspect_archive(path, DEFAULT),
        lambda: extract_archive(path, tmp_path / "d", DEFAULT),
    ):
        with pytest.raises(UnsafeArchive, match=r"bomb\.jpg") as err:
            call()
        assert err.value.code == "compression_ratio"
    assert tree(tmp_path / "d") == {}


def test_small_highly_compressible_member_is_fine(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [("cats/blank.png", bytes(512 * 1024))])
    assert inspect_archive(path, DEFAULT) == ArchiveInfo("zip", 1, 512 * 1024)


def test_lying_zip_header_smaller_than_data(tmp_path: Path) -> None:
    noise = random.Random(3).randbytes(256 * 1024)
    data = write_zip(tmp_path / "a.zip", [("cats/1.jpg", JPEG), ("cats/2.jpg", noise)]).read_bytes()
    path = tmp_path / "lying.zip"
    path.write_bytes(patch_zip_member(data, "cats/2.jpg", size=100))
    assert inspect_archive(path, DEFAULT).total_bytes == len(JPEG) + 100  # headers look harmless
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match=r"cats/2\.jpg") as err:
        extract_archive(path, dest, DEFAULT)
    assert err.value.code == "corrupt_archive"  # zipfile stops at the declared size: bad CRC
    assert tree(dest) == {}


def test_lying_zip_header_larger_than_data(tmp_path: Path) -> None:
    data = write_zip(tmp_path / "a.zip", [("cats/1.jpg", JPEG)], zipfile.ZIP_STORED).read_bytes()
    path = tmp_path / "lying.zip"
    path.write_bytes(patch_zip_member(data, "cats/1.jpg", size=len(JPEG) + 50))
    with pytest.raises(UnsafeArchive) as err:
        extract_archive(path, tmp_path / "dest", DEFAULT)
    assert err.value.code == "corrupt_archive"
    assert tree(tmp_path / "dest") == {}


def test_written_bytes_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_zip(tmp_path / "a.zip", list(good_entries().items()))

    def overflowing_open(self: zipfile.ZipFile, info: zipfile.ZipInfo) -> io.BytesIO:
        return io.BytesIO(b"\x00" * (info.file_size + 1))

    monkeypatch.setattr(zipfile.ZipFile, "open", overflowing_open)
    with pytest.raises(UnsafeArchive, match="more than") as err:
        extract_archive(path, tmp_path / "dest", DEFAULT)
    assert err.value.code == "too_large"
    assert tree(tmp_path / "dest") == {}


def test_nested_archive_suffixes(tmp_path: Path) -> None:
    for suffix in (".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".xz", ".7z", ".RAR"):
        path = write_zip(tmp_path / "a.zip", [("cats/1.jpg", JPEG), (f"cats/x{suffix}", b"x")])
        with pytest.raises(UnsafeArchive) as err:
            inspect_archive(path, DEFAULT)
        assert err.value.code == "nested_archive", suffix


def test_empty_variants(tmp_path: Path) -> None:
    empty_zip = write_zip(tmp_path / "a.zip", [])
    assert empty_zip.read_bytes()[:4] == b"PK\x05\x06"
    only_mac = write_zip(tmp_path / "b.zip", [("__MACOSX/cats/._1.jpg", b"x"), ("cats/", b"")])
    dirs_tar = write_tar(tmp_path / "c.tar", [tar_entry("cats", tarfile.DIRTYPE)])
    for path in (empty_zip, only_mac, dirs_tar):
        with pytest.raises(UnsafeArchive) as err:
            extract_archive(path, tmp_path / "dest", DEFAULT)
        assert err.value.code == "empty_archive"
    assert tree(tmp_path / "dest") == {}


def test_corrupt_variants(tmp_path: Path) -> None:
    noise = random.Random(5).randbytes(64 * 1024)
    entries = [tar_file("cats/1.jpg", noise), tar_file("cats/2.jpg", noise)]
    for gz in (False, True):
        data = write_tar(tmp_path / "full", entries, gz=gz).read_bytes()
        path = tmp_path / "cut"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(UnsafeArchive) as err:
            inspect_archive(path, DEFAULT)
        assert err.value.code == "corrupt_archive", gz
    garbled = tmp_path / "garbled.tar.gz"
    garbled.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 200)
    assert detect_kind(garbled) is None
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(garbled, DEFAULT)
    assert err.value.code == "corrupt_archive"


def test_not_an_archive_variants(tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "image.jpg.gz"
    gz.write_bytes(gzip.compress(JPEG * 10))
    png = tmp_path / "a.tar"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    for path in (gz, png, empty):
        assert detect_kind(path) is None
        with pytest.raises(UnsafeArchive) as err:
            extract_archive(path, tmp_path / "dest", DEFAULT)
        assert err.value.code == "not_an_archive"


def test_bad_crc_midway_removes_everything_written(tmp_path: Path) -> None:
    entries = [*good_entries().items(), ("zebras/4.jpg", JPEG + b"4")]
    data = bytearray(write_zip(tmp_path / "a.zip", entries, zipfile.ZIP_STORED).read_bytes())
    last = data.rfind(JPEG + b"4")
    data[last + 10] ^= 0xFF
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(data))
    assert inspect_archive(path, DEFAULT).members == 4  # only the data is bad
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    (dest / "cats").mkdir()
    (dest / "cats" / "old.jpg").write_bytes(b"old")
    with pytest.raises(UnsafeArchive, match=r"zebras/4\.jpg") as err:
        extract_archive(path, dest, DEFAULT)
    assert err.value.code == "corrupt_archive"
    assert tree(dest) == {"cats": None, "cats/old.jpg": b"old"}


def test_symlink_already_in_dest_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "cats").symlink_to(outside, target_is_directory=True)
    path = write_zip(tmp_path / "a.zip", list(good_entries().items()))
    with pytest.raises(UnsafeArchive) as err:
        extract_archive(path, dest, DEFAULT)
    assert err.value.code == "link_member"
    assert list(outside.iterdir()) == []


def test_duplicate_member_is_rejected_on_extract(tmp_path: Path) -> None:
    entries = [tar_file("cats/1.jpg", JPEG), tar_file("cats/1.jpg", JPEG + b"again")]
    path = write_tar(tmp_path / "a.tar", entries)
    with pytest.raises(UnsafeArchive, match="twice") as err:
        extract_archive(path, tmp_path / "dest", DEFAULT)
    assert err.value.code == "corrupt_archive"
    assert tree(tmp_path / "dest") == {}


# --------------------------------------------------------------------------- good archives


def expected_tree(prefix: str = "") -> dict[str, bytes | None]:
    """The tree good_entries() extracts to, under an optional wrapping folder."""
    out: dict[str, bytes | None] = {}
    if prefix:
        out[prefix.rstrip("/")] = None
    out[f"{prefix}cats"] = None
    out[f"{prefix}dogs"] = None
    out.update({prefix + name: data for name, data in good_entries().items()})
    return out


def test_good_zip(tmp_path: Path) -> None:
    entries = [
        *good_entries().items(),
        ("__MACOSX/cats/._1.jpg", b"apple double"),
        ("cats/._2.jpg", b"apple double"),
    ]
    path = write_zip(tmp_path / "upload.bin", entries)
    assert detect_kind(path) == "zip"
    size = sum(len(v) for v in good_entries().values())
    assert inspect_archive(path, DEFAULT) == ArchiveInfo("zip", 3, size)
    dest = tmp_path / "dest"
    assert extract_archive(path, dest, DEFAULT) == ArchiveInfo("zip", 3, size)
    assert tree(dest) == expected_tree()
    for file in dest.rglob("*.jpg"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644


def test_good_zip_backslash_names(tmp_path: Path) -> None:
    entries = [(name.replace("/", "\\"), data) for name, data in good_entries().items()]
    path = write_zip(tmp_path / "win.zip", entries)
    extract_archive(path, tmp_path / "dest", DEFAULT)
    assert tree(tmp_path / "dest") == expected_tree()


def test_utf8_zip_name_without_flag(tmp_path: Path) -> None:
    data = write_zip(tmp_path / "a.zip", [("dogs/h\u00e9llo.jpg", JPEG)]).read_bytes()
    path = tmp_path / "infozip.zip"
    path.write_bytes(patch_zip_member(data, "dogs/h\u00e9llo.jpg", unflag=0x800))
    extract_archive(path, tmp_path / "dest", DEFAULT)
    assert tree(tmp_path / "dest") == {"dogs": None, "dogs/h\u00e9llo.jpg": JPEG}


def test_tar_with_garbled_later_header_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(write_tar(tmp_path / "a.tar", good_tar_entries()).read_bytes())
    with tarfile.open(tmp_path / "a.tar") as tf:
        third = tf.getmembers()[2].offset
    data[third + 148 : third + 156] = b"9999999\0"  # header checksum
    path = tmp_path / "bad.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchive) as err:
        inspect_archive(path, DEFAULT)  # tarfile alone would quietly stop after two folders
    assert err.value.code == "corrupt_archive"


def test_oversized_tar_header_is_refused(tmp_path: Path) -> None:
    long_name = "cats/" + "x" * 120 + ".jpg"
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        info, data = tar_file(long_name, JPEG)
        tf.addfile(info, io.BytesIO(data))
    header = bytearray((tmp_path / "a.tar").read_bytes())
    assert header[156:157] == tarfile.XHDTYPE
    header[124:136] = b"%011o\0" % (128 * 1024**2)  # pax record claims 128 MiB
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    path = tmp_path / "big-header.tar"
    path.write_bytes(bytes(header))
    with pytest.raises(UnsafeArchive, match="at once") as err:
        inspect_archive(path, DEFAULT)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(("gz", "kind"), [(False, "tar"), (True, "tar.gz")])
def test_good_tar(tmp_path: Path, gz: bool, kind: str) -> None:
    path = write_tar(tmp_path / "upload.zip", good_tar_entries(), gz=gz)  # misleading name
    assert detect_kind(path) == kind
    size = sum(len(v) for v in good_entries().values())
    assert inspect_archive(path, DEFAULT) == ArchiveInfo(kind, 3, size)
    dest = tmp_path / "dest"
    assert extract_archive(path, dest, DEFAULT) == ArchiveInfo(kind, 3, size)
    assert tree(dest) == expected_tree()
    for file in dest.rglob("*.jpg"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644  # setuid/exec bits dropped


def test_wrapping_folder_is_kept(tmp_path: Path) -> None:
    entries = [("dataset/", b"")] + [(f"dataset/{k}", v) for k, v in good_entries().items()]
    path = write_zip(tmp_path / "a.zip", entries)
    extract_archive(path, tmp_path / "dest", DEFAULT)
    assert tree(tmp_path / "dest") == expected_tree("dataset/")


def test_fuzzed_archives_fail_cleanly(tmp_path: Path) -> None:
    rng = random.Random(2024)
    originals = [
        write_zip(tmp_path / "z", list(good_entries().items())).read_bytes(),
        write_tar(tmp_path / "t", good_tar_entries()).read_bytes(),
        write_tar(tmp_path / "g", good_tar_entries(), gz=True).read_bytes(),
    ]
    work = tmp_path / "work"
    work.mkdir()
    for i in range(300):
        data = bytearray(originals[i % 3])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = work / "fuzz"
        path.write_bytes(bytes(data))
        dest = work / f"d{i}"
        code = None
        try:
            extract_archive(path, dest, DEFAULT)
        except UnsafeArchive as exc:
            code = exc.code
        if code is not None:
            assert code in CODES
            assert list(dest.iterdir()) == []
        for extracted in dest.rglob("*"):
            assert extracted.resolve().is_relative_to(dest.resolve())
    assert {p.name for p in work.iterdir() if not p.name.startswith("d")} == {"fuzz"}
