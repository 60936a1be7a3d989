"""Safe inspection and extraction of uploaded dataset archives (.zip, .tar, .tar.gz)."""

from __future__ import annotations

import contextlib
import gzip
import logging
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from shared.settings import Settings

logger = logging.getLogger(__name__)

CODES = frozenset(
    {
        "not_an_archive",
        "corrupt_archive",
        "empty_archive",
        "path_traversal",
        "absolute_path",
        "link_member",
        "special_file",
        "too_many_members",
        "too_large",
        "compression_ratio",
        "nested_archive",
        "encrypted_member",
        "sparse_member",
    }
)

CHUNK_BYTES = 1024**2
RATIO_FLOOR_BYTES = 1024**2
FILE_MODE = 0o644
NESTED_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".xz", ".7z", ".rar")

_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
# The longest single read tarfile may make on its own (pax / GNU long-name headers).
_MAX_TAR_READ = 64 * 1024**2
# Exceptions that mean "the archive bytes are bad" while parsing or decompressing.
_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    NotImplementedError,
    UnicodeDecodeError,  # zip names flagged UTF-8 that are not
    ValueError,  # tarfile's int() of a garbled pax field or GNU sparse map
    OSError,  # gzip.BadGzipFile, bz2 "Invalid data stream", short reads of the upload
)
# While reading member data zipfile also raises RuntimeError (e.g. an undeclared password).
_READ_ERRORS: tuple[type[BaseException], ...] = (*_CORRUPT_ERRORS, RuntimeError)


class UnsafeArchive(Exception):
    """Raised with a message a person understands, naming the offending member; .code is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"UnsafeArchive({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds an archive must stay within to be inspected or extracted."""

    max_members: int = 200_000
    max_total_bytes: int = 20 * 1024**3  # sum of uncompressed member sizes
    max_member_bytes: int = 1024**3
    # Expanded over stored bytes, per zip member and for the whole archive of every kind
    # (declared sizes when inspecting, the bytes written when extracting). Images hardly
    # compress; a 10 KB tar of sparse members expanded to 1.9 GiB on disk.
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The limits the service is configured with (DIGITS_ARCHIVE_*)."""
        return cls(
            max_members=settings.archive_max_members,
            max_total_bytes=settings.archive_max_total_bytes,
            max_member_bytes=settings.archive_max_member_bytes,
            max_ratio=settings.archive_max_expansion_ratio,
        )


@dataclass(frozen=True)
class ArchiveInfo:
    """What an archive holds: its kind, number of regular files and their total size."""

    kind: str  # "zip" | "tar" | "tar.gz"
    members: int  # regular files (ignored macOS metadata excluded)
    total_bytes: int


@dataclass
class _Member:
    """One archive entry that passed the per-member checks."""

    raw_name: str
    name: str  # normalised relative POSIX path ("" for the archive root)
    is_dir: bool
    ignored: bool  # macOS metadata: checked, never extracted
    size: int  # declared uncompressed size
    packed: int | None  # declared compressed size (zip only)
    open: Callable[[], IO[bytes]] | None


class _Tally:
    """Running counters shared by inspection and extraction, raising on the first breach."""

    def __init__(self, kind: str, limits: ArchiveLimits, archive_bytes: int) -> None:
        self.kind = kind
        self.limits = limits
        self.archive_bytes = max(archive_bytes, 1)
        self.entries = 0
        self.total = 0  # every entry's bytes, ignored ones included (they cost work too)
        self.files = 0
        self.file_bytes = 0

    def count_entry(self) -> None:
        """Count one more entry of any type against max_members."""
        self.entries += 1
        if self.entries > self.limits.max_members:
            raise UnsafeArchive(
                "too_many_members",
                f"the archive has more than {self.limits.max_members} entries",
            )

    def check_member_size(self, member: _Member, size: int) -> None:
        """Check one member's (declared or actual) size against the per-member limits."""
        limits = self.limits
        if size > limits.max_member_bytes:
            raise UnsafeArchive(
                "too_large",
                f"member '{member.raw_name}' is {size} bytes uncompressed, "
                f"over the {limits.max_member_bytes}-byte limit per file",
            )
        packed = member.packed
        if packed is not None and size > RATIO_FLOOR_BYTES and size > limits.max_ratio * packed:
            raise UnsafeArchive(
                "compression_ratio",
                f"member '{member.raw_name}' expands from {packed} to {size} bytes, "
                f"a compression ratio over {limits.max_ratio:g} (zip bomb?)",
            )

    def add_bytes(self, member: _Member, count: int) -> None:
        """Add bytes to the running total and check the archive-wide limits."""
        self.total += count
        limits = self.limits
        if self.total > limits.max_total_bytes:
            raise UnsafeArchive(
                "too_large",
                f"the archive expands to more than {limits.max_total_bytes} bytes "
                f"(reached at member '{member.raw_name}')",
            )
        if self.total > RATIO_FLOOR_BYTES and self.total > limits.max_ratio * self.archive_bytes:
            hint = {"zip": "zip bomb?", "tar.gz": "gzip bomb?"}.get(self.kind, "lying headers?")
            raise UnsafeArchive(
                "compression_ratio",
                f"the archive expands from {self.archive_bytes} to over {self.total} bytes, "
                f"a compression ratio over {limits.max_ratio:g} "
                f"(reached at member '{member.raw_name}'; {hint})",
            )


class _GuardedReader:
    """File wrapper under tarfile that refuses any single huge read (oversized pax headers)."""

    def __init__(self, raw: BinaryIO | gzip.GzipFile) -> None:
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        """Read at most _MAX_TAR_READ bytes in one call."""
        if size is None or size < 0 or size > _MAX_TAR_READ:
            raise UnsafeArchive(
                "too_large", f"a tar header asks to read {size} bytes at once; refusing"
            )
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Seek the underlying stream (forward-only is cheap for gzip)."""
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        """Position in the (uncompressed) stream."""
        return self._raw.tell()

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Seekable as far as the underlying stream is."""
        return True


def _is_tar(block: bytes) -> bool:
    """Whether a first 512-byte block looks like a ustar/GNU/pax tar header."""
    return len(block) >= 262 and block[257:262] == b"ustar"


def _sniff(fh: BinaryIO) -> str | None:
    """Kind of the open file by magic bytes; raise corrupt_archive for an unreadable gzip."""
    fh.seek(0)
    head = fh.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        fh.seek(0)
        inner = b""
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                while len(inner) < 512:
                    piece = gz.read(512 - len(inner))
                    if not piece:
                        break
                    inner += piece
        except (OSError, EOFError, zlib.error) as exc:
            if _is_tar(inner):
                return "tar.gz"
            raise UnsafeArchive(
                "corrupt_archive", f"the gzip data is corrupt or truncated ({exc})"
            ) from exc
        return "tar.gz" if _is_tar(inner) else None
    return "tar" if _is_tar(head) else None


def detect_kind(path: Path) -> str | None:
    """Archive kind by magic bytes ("zip", "tar" or "tar.gz"), None when not recognised."""
    with open(path, "rb") as fh:
        try:
            return _sniff(fh)
        except UnsafeArchive:
            return None


def _normalise(raw: str) -> str:
    """Relative POSIX form of a member name, rejecting traversal and absolute names."""
    name = raw.replace("\\", "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(
            "path_traversal", f"member '{raw}' has a '..' component and would escape the folder"
        )
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeArchive("absolute_path", f"member '{raw}' has an absolute path")
    return "/".join(parts)


def _is_ignored(name: str) -> bool:
    """macOS metadata that is skipped: __MACOSX/ trees and AppleDouble '._' files."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith("._") for part in parts)


def _zip_declared_entries(fh: BinaryIO) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile parses it."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, 22 + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    total = int(struct.unpack_from("<H", tail, pos + 10)[0])
    if total == 0xFFFF and pos >= 20 and tail[pos - 20 : pos - 16] == b"PK\x06\x07":
        (z64_offset,) = struct.unpack_from("<Q", tail, pos - 20 + 8)
        fh.seek(z64_offset)
        record = fh.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            total = int(struct.unpack_from("<Q", record, 32)[0])
    return total


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Member name, reading UTF-8 names stored without the UTF-8 flag (Info-ZIP) as UTF-8."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _iter_zip(fh: BinaryIO, limits: ArchiveLimits) -> Generator[_Member, None, None]:
    """Yield checked zip members in central-directory order."""
    declared = _zip_declared_entries(fh)
    if declared is not None and declared > limits.max_members:
        raise UnsafeArchive(
            "too_many_members",
            f"the archive declares {declared} entries, over the limit of {limits.max_members}",
        )
    fh.seek(0)
    with zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            raw = _zip_name(info)
            name = _normalise(raw)
            mode = info.external_attr >> 16
            fmt = stat.S_IFMT(mode)
            if fmt == stat.S_IFLNK:
                raise UnsafeArchive("link_member", f"member '{raw}' is a symbolic link")
            is_dir = raw.replace("\\", "/").endswith("/") or fmt == stat.S_IFDIR or not name
            if not is_dir and fmt not in (0, stat.S_IFREG):
                raise UnsafeArchive(
                    "special_file", f"member '{raw}' is a device, fifo or socket, not a file"
                )
            if info.flag_bits & 0x1:
                raise UnsafeArchive("encrypted_member", f"member '{raw}' is encrypted")
            if not is_dir and info.compress_type not in _ZIP_METHODS:
                raise UnsafeArchive(
                    "corrupt_archive",
                    f"member '{raw}' uses unsupported compression method {info.compress_type}",
                )
            yield _Member(
                raw_name=raw,
                name=name,
                is_dir=is_dir,
                ignored=_is_ignored(name),
                size=0 if is_dir else info.file_size,
                packed=None if is_dir else info.compress_size,
                open=None if is_dir else partial(zf.open, info),
            )


def _extract_tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    """Open the data of one regular tar member."""
    source = tf.extractfile(info)
    if source is None:
        raise tarfile.ReadError(f"no data for member '{info.name}'")
    return source


def _is_sparse(info: tarfile.TarInfo) -> bool:
    """A GNU sparse member: old GNU type 'S', or PAX 0.0, 0.1 or 1.0 (GNU.sparse.* headers)."""
    return (
        info.type == tarfile.GNUTYPE_SPARSE
        or info.sparse is not None
        or any(key.startswith("GNU.sparse.") for key in info.pax_headers)
    )


def _iter_tar(fh: BinaryIO, gz: bool) -> Generator[_Member, None, None]:
    """Yield checked tar members one header at a time, keeping no member list in memory."""
    fh.seek(0)
    stream: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
    guarded = _GuardedReader(stream)
    with contextlib.ExitStack() as stack:
        if isinstance(stream, gzip.GzipFile):
            stack.enter_context(stream)
        # typeshed's tarfile wants a file object with write() and close() even to read, and
        # tarfile never calls either on a file object it was given
        tf = stack.enter_context(tarfile.open(fileobj=guarded, mode="r:"))  # type: ignore[call-overload]
        while True:
            info = tf.next()
            tf.members.clear()  # tarfile caches every header; we do not need them
            if info is None:
                # tarfile ends quietly at a bad or cut header; only zeros or a clean EOF are an end.
                guarded.seek(tf.offset)
                block = guarded.read(tarfile.BLOCKSIZE)
                if block and block != bytes(tarfile.BLOCKSIZE):
                    raise tarfile.ReadError(f"invalid or truncated header at byte {tf.offset}")
                return
            raw = info.name
            name = _normalise(raw)
            if _is_sparse(info):
                raise UnsafeArchive(
                    "sparse_member",
                    f"member '{raw}' is a sparse file; its holes would be written out in full",
                )
            if info.issym() or info.islnk():
                kind = "symbolic" if info.issym() else "hard"
                raise UnsafeArchive(
                    "link_member", f"member '{raw}' is a {kind} link to '{info.linkname}'"
                )
            is_dir = info.isdir()
            if not name and not is_dir:
                raise UnsafeArchive("corrupt_archive", f"member '{raw}' has no file name")
            if not is_dir and not info.isreg():
                raise UnsafeArchive(
                    "special_file", f"member '{raw}' is a device, fifo or other special file"
                )
            yield _Member(
                raw_name=raw,
                name=name,
                is_dir=is_dir,
                ignored=_is_ignored(name),
                size=0 if is_dir else info.size,
                packed=None,
                open=None if is_dir else partial(_extract_tar_member, tf, info),
            )


def _walk(fh: BinaryIO, kind: str, tally: _Tally) -> Generator[_Member, None, None]:
    """Yield members that pass every header check, in archive order."""
    inner = _iter_zip(fh, tally.limits) if kind == "zip" else _iter_tar(fh, kind == "tar.gz")
    with contextlib.closing(inner):
        while True:
            try:
                member = next(inner)
            except StopIteration:
                break
            except UnsafeArchive:
                raise
            except _CORRUPT_ERRORS as exc:
                raise UnsafeArchive(
                    "corrupt_archive", f"the archive is corrupt or truncated ({exc})"
                ) from exc
            tally.count_entry()
            if member.is_dir:
                yield member
                continue
            tally.check_member_size(member, member.size)
            tally.add_bytes(member, member.size)
            if not member.ignored and member.name.lower().endswith(NESTED_SUFFIXES):
                raise UnsafeArchive(
                    "nested_archive",
                    f"member '{member.raw_name}' is itself an archive; upload images only",
                )
            if not member.ignored:
                tally.files += 1
                tally.file_bytes += member.size
            yield member


def _open_archive(path: Path) -> tuple[BinaryIO, str]:
    """Open the upload and identify its kind, raising not_an_archive when unknown."""
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    try:
        kind = _sniff(fh)
    except BaseException:
        fh.close()
        raise
    if kind is None:
        fh.close()
        raise UnsafeArchive("not_an_archive", "the upload is not a .zip, .tar or .tar.gz archive")
    return fh, kind


def _empty_error() -> UnsafeArchive:
    """The error for archives without a single regular file."""
    return UnsafeArchive("empty_archive", "the archive holds no files (only folders, or nothing)")


def _check_headers(fh: BinaryIO, kind: str, limits: ArchiveLimits) -> _Tally:
    """Walk every member header (no data is read), raising at the first problem."""
    tally = _Tally(kind, limits, os.fstat(fh.fileno()).st_size)
    with contextlib.closing(_walk(fh, kind, tally)) as members:
        for _member in members:
            pass
    return tally


def inspect_archive(path: Path, limits: ArchiveLimits) -> ArchiveInfo:
    """Check every member header without extracting; raise UnsafeArchive at the first problem."""
    try:
        fh, kind = _open_archive(path)
        with fh:
            tally = _check_headers(fh, kind, limits)
        if tally.files == 0:
            raise _empty_error()
    except UnsafeArchive as exc:
        logger.info("archive %s rejected: %s (%s)", path, exc.code, exc.message)
        raise
    info = ArchiveInfo(kind=kind, members=tally.files, total_bytes=tally.file_bytes)
    logger.debug("archive %s inspected: %s", path, info)
    return info


class _Extraction:
    """Writes members under one destination and remembers what it created, to undo it."""

    def __init__(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.root = dest.resolve(strict=True)
        self.created: list[Path] = []

    def _inside(self, member: _Member, target: Path) -> None:
        """Refuse a target whose resolved path leaves the destination (e.g. via a symlink)."""
        resolved = target.resolve(strict=False)
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise UnsafeArchive(
                "path_traversal",
                f"member '{member.raw_name}' would be written outside the destination folder",
            )

    def make_dirs(self, member: _Member, parts: list[str]) -> Path:
        """Create the folders of parts one by one inside the destination; return the last."""
        current = self.root
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise UnsafeArchive(
                    "link_member",
                    f"member '{member.raw_name}' would be written through a symbolic link",
                )
            self._inside(member, current)
            try:
                current.mkdir()
            except FileExistsError:
                if not current.is_dir():
                    raise UnsafeArchive(
                        "corrupt_archive",
                        f"member '{member.raw_name}' needs a folder where the archive has a file",
                    ) from None
            else:
                self.created.append(current)
        return current

    def write_file(self, member: _Member, tally: _Tally) -> int:
        """Stream one regular member to disk in chunks, re-checking sizes as bytes arrive."""
        parts = member.name.split("/")
        parent = self.make_dirs(member, parts[:-1])
        target = parent / parts[-1]
        self._inside(member, target)
        assert member.open is not None
        written = 0
        with _read_errors(member):
            source = member.open()
        with source:
            try:
                out = open(target, "xb")  # noqa: SIM115 - closed just below
            except (FileExistsError, IsADirectoryError):
                raise UnsafeArchive(
                    "corrupt_archive",
                    f"member '{member.raw_name}' appears twice or clashes with a folder",
                ) from None
            self.created.append(target)
            with out:
                os.fchmod(out.fileno(), FILE_MODE)
                while True:
                    with _read_errors(member):
                        chunk = source.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > member.size:
                        raise UnsafeArchive(
                            "too_large",
                            f"member '{member.raw_name}' holds more than the {member.size} "
                            "bytes its header declares",
                        )
                    tally.check_member_size(member, written)
                    tally.add_bytes(member, len(chunk))
                    out.write(chunk)
        if written != member.size:
            raise UnsafeArchive(
                "corrupt_archive",
                f"member '{member.raw_name}' holds {written} bytes, "
                f"not the {member.size} its header declares",
            )
        return written

    def undo(self) -> None:
        """Remove every file and folder this extraction created, newest first."""
        for path in reversed(self.created):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove %s after a failed extraction: %s", path, exc)
        self.created.clear()


@contextlib.contextmanager
def _read_errors(member: _Member) -> Iterator[None]:
    """Turn decompression and parsing errors while reading a member into corrupt_archive."""
    try:
        yield
    except UnsafeArchive:
        raise
    except _READ_ERRORS as exc:
        raise UnsafeArchive(
            "corrupt_archive", f"member '{member.raw_name}' is corrupt or truncated ({exc})"
        ) from exc


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> ArchiveInfo:
    """Extract regular files and folders under dest, re-checking everything; undo on failure."""
    job = _Extraction(dest)
    try:
        fh, kind = _open_archive(path)
        with fh:
            if kind == "zip":
                # The central directory declares every size up front: a bomb of many members,
                # each under the per-file checks, is refused before one byte is written (it
                # wrote 221 MB first). A tar's headers come with its data, so they are checked
                # as they come: plain tar cannot expand (sparse members are refused) and a
                # tar.gz stops at max_ratio times its size, after inspect_archive passed it.
                _check_headers(fh, kind, limits)
            archive_bytes = os.fstat(fh.fileno()).st_size
            header_tally = _Tally(kind, limits, archive_bytes)
            data_tally = _Tally(kind, limits, archive_bytes)
            with contextlib.closing(_walk(fh, kind, header_tally)) as members:
                for member in members:
                    if member.ignored or not member.name:
                        continue
                    if member.is_dir:
                        job.make_dirs(member, member.name.split("/"))
                        continue
                    written = job.write_file(member, data_tally)
                    data_tally.files += 1
                    data_tally.file_bytes += written
        if data_tally.files == 0:
            raise _empty_error()
    except BaseException as exc:
        job.undo()
        if isinstance(exc, UnsafeArchive):
            logger.info("archive %s rejected during extraction: %s (%s)", path, exc.code, exc)
        else:
            logger.warning("extraction of %s into %s failed: %r", path, dest, exc)
        raise
    info = ArchiveInfo(kind=kind, members=data_tally.files, total_bytes=data_tally.file_bytes)
    logger.info("archive %s extracted into %s: %s", path, dest, info)
    return info
