"""``qbench data download``: resumable downloads and safe, atomic archive extraction.

* Resumable: bytes land in ``<archive>.part``; a later attempt (an automatic retry, or the same
  command run again) asks the server for the rest with an HTTP ``Range`` header (RFC 9110
  §14.2) and appends when it answers 206 Partial Content, starting over when it answers 200.
* Verified: a download is complete only when its length (``Content-Length``, or the total of
  ``Content-Range``) or its MD5 (known for the published archives; a mismatch deletes the file
  and stops) says so. When neither is known (a server that sends no length, a mirror, a 416
  answer to a resume without a total) the archive must open fully (every member listed, up to
  the end-of-archive marker); one that does not is moved aside to ``<archive>.corrupt`` (named
  on stderr) and downloaded again. A body cut short without a length therefore never passes
  as a complete archive.
* Safe: every member of the archive is checked *before anything is written*: absolute paths,
  ``..`` components, links whose target leaves the extraction folder, device files and FIFOs
  are refused. Tar extraction also uses Python's ``data`` filter (PEP 706) as a second guard.
* Atomic: the archive is unpacked into a temporary folder inside ``root`` and each top-level
  entry is then renamed into place, so an interrupted or refused extraction never leaves a
  half-filled dataset folder that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import lzma
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from qbench.errors import QBenchError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a downloadable dataset comes from and the folder its archive unpacks to."""

    name: str
    url: str
    md5: str | None
    folder: str


# fast.ai's Imagenette, 320 px shortest side; MD5 as published with the archive (also listed
# by torchvision.datasets.Imagenette).
IMAGENETTE = Source(
    "imagenette",
    "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
    "3df6f0d01a2c9592104656642f5e78a3",
    "imagenette2-320",
)
# Stanford CS231n's Tiny ImageNet archive.
TINY_IMAGENET = Source(
    "tiny-imagenet",
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "90528d7ca1a48142e341f4ef8d21d0de",
    "tiny-imagenet-200",
)


class DownloadError(QBenchError):
    """A download failed, was interrupted for good, or produced the wrong bytes."""


class UnsafeArchiveError(QBenchError):
    """An archive member would land outside the extraction folder."""


class CorruptArchiveError(QBenchError):
    """An archive is truncated, damaged or not a tar/zip file at all."""


#: What a truncated or damaged archive raises while it is read (BadGzipFile is an OSError:
#: listed so that it is told apart from a disk error).
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
)


# -- progress ---------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr (percent, size, rate), redrawn at most 10x a second."""

    def __init__(
        self,
        label: str,
        total: int | None,
        start: int,
        enabled: bool,
        stream: IO[str] | None = None,
    ):
        self.label = label
        self.total = total
        self.done = start
        self.start_bytes = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.last_draw = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last_draw >= 0.1:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = (self.done - self.start_bytes) / max(now - self.started, 1e-6) / 1e6
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(fraction * 30)
            text = (
                f"\r{self.label} [{bar:<30}] {fraction:6.1%} "
                f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
            )
        else:
            text = f"\r{self.label} {self.done / 1e6:.1f} MB {rate:.1f} MB/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


# -- download ---------------------------------------------------------------------------------


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" (RFC 9110 §14.4)
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _content_range_total(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200" (RFC 9110 §14.4); "*" as the total means unknown
    if not value or not value.startswith("bytes ") or "/" not in value:
        return None
    try:
        return int(value.rsplit("/", 1)[1])
    except ValueError:
        return None


def verify_archive(archive: Path) -> None:
    """Raise :class:`CorruptArchiveError` unless ``archive`` is a tar or zip that opens fully.

    Zip: the central directory (at the end of the file) is read and every member's CRC is
    checked. Tar (plain or compressed): every header is read, the data of every member is
    skipped over, and the end-of-archive marker (two zero blocks, POSIX ustar) must follow, so
    a file cut between two members is caught too.
    """
    archive = Path(archive)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                bad = handle.testzip()
            if bad is not None:
                raise CorruptArchiveError(f"archive {archive}: member {bad!r} fails its CRC check")
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as handle:
                for _member in handle:  # reads every header, seeking over the data
                    pass
                handle.fileobj.seek(handle.offset)
                marker = handle.fileobj.read(2 * tarfile.BLOCKSIZE)
                if len(marker) < 2 * tarfile.BLOCKSIZE or any(marker):
                    raise CorruptArchiveError(
                        f"archive {archive}: ends after {len(handle.getmembers())} member(s) "
                        "without the end-of-archive marker (truncated)"
                    )
                while handle.fileobj.read(CHUNK_BYTES):  # a compressed stream's own trailer
                    pass
        else:
            raise CorruptArchiveError(f"archive {archive}: not a tar or zip file")
    except _CORRUPT as exc:
        raise CorruptArchiveError(
            f"archive {archive}: truncated or damaged ({type(exc).__name__}: {exc})"
        ) from None


def move_aside(path: Path, reason: str | None = None) -> Path:
    """Rename a damaged download to ``<name>.corrupt`` (replacing an older one) and return the
    new path; with a ``reason``, say on stderr that it is downloaded again."""
    corrupt = path.with_name(path.name.removesuffix(".part") + ".corrupt")
    os.replace(path, corrupt)
    if reason is not None:
        print(f"qbench: {reason}; moved it to {corrupt} and downloading again", file=sys.stderr)
    return corrupt


def _transfer(
    url: str, part: Path, *, label: str, progress: bool, retries: int, timeout: float
) -> bool:
    """Fetch ``url`` into ``part`` (resuming it); True when the length proves it complete."""
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "qbench-adapters"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = getattr(response, "status", 200)
                content_range = response.headers.get("Content-Range")
                if offset and (status != 206 or _content_range_start(content_range) != offset):
                    offset = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = _content_range_total(content_range) if offset else None
                if total is None and length is not None:
                    total = offset + int(length)
                bar = _Progress(label, total, offset, progress)
                written = offset
                with open(part, "ab" if offset else "wb") as handle:
                    while True:
                        block = response.read(CHUNK_BYTES)
                        if not block:
                            break
                        handle.write(block)
                        written += len(block)
                        bar.update(len(block))
                bar.close()
                if total is not None and written < total:
                    raise http.client.IncompleteRead(b"", total - written)
                if total is not None and written > total:
                    part.unlink()
                    raise DownloadError(
                        f"download of {url}: received {written} bytes, but the server announced "
                        f"{total}; the file was deleted (run again to retry)"
                    )
                return total is not None
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                total = _content_range_total(exc.headers.get("Content-Range"))
                if total == offset:  # nothing left to send: the .part is complete
                    return True
                if total is None:  # unknown: the caller checks that the archive opens fully
                    return False
                part.unlink()  # the .part does not fit the file the server has: start over
                continue
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            attempt += 1
            have = part.stat().st_size if part.is_file() else 0
            if attempt > retries:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                raise DownloadError(
                    f"download of {url} interrupted after {have} bytes ({reason}); run the same "
                    f"command again to resume from {part}"
                ) from None
            time.sleep(min(0.5 * attempt, 5.0))


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download the archive at ``url`` to ``dest`` (resuming ``dest.part``).

    Complete means: the length the server announced arrived, or ``md5`` matches, or (neither
    known) the archive opens fully (:func:`verify_archive`). An archive that does not is moved
    to ``<dest>.corrupt`` and downloaded once more from scratch; a second failure is a
    :class:`DownloadError`.
    """
    dest = Path(dest)
    if dest.is_file():
        if md5 is not None and md5_of(dest) == md5:
            return dest
        if md5 is None:
            try:
                verify_archive(dest)
                return dest
            except CorruptArchiveError as exc:
                move_aside(dest, str(exc))
    part = dest.with_name(dest.name + ".part")
    for last_try in (False, True):
        complete = _transfer(
            url, part, label=dest.name, progress=progress, retries=retries, timeout=timeout
        )
        if md5 is not None:
            found = md5_of(part)
            if found == md5:
                break
            if complete or last_try:  # all announced bytes arrived (or twice): wrong bytes
                part.unlink()
                raise DownloadError(
                    f"checksum mismatch for {url}: md5 {found}, expected {md5}; the file was "
                    "deleted (run again to retry, or pass --url to use a mirror)"
                )
            problem = f"{part}: md5 {found}, expected {md5} (incomplete download)"
        elif complete:
            break
        else:
            try:
                verify_archive(part)
                break
            except CorruptArchiveError as exc:
                problem = str(exc)
        if last_try:
            corrupt = move_aside(part)
            raise DownloadError(
                f"download of {url} gave an incomplete or damaged archive twice (no length "
                f"to check it by): {problem}; the last attempt is {corrupt}"
            )
        move_aside(part, problem)
    os.replace(part, dest)
    return dest


# -- extraction -------------------------------------------------------------------------------


def _check_name(archive: Path, name: str) -> None:
    posix = name.replace("\\", "/")
    if (
        posix.startswith("/")
        or PurePosixPath(posix).is_absolute()
        or (len(posix) > 1 and posix[1] == ":")
    ):
        raise UnsafeArchiveError(
            f"archive {archive}: member {name!r} has an absolute path; refusing to extract"
        )
    if ".." in PurePosixPath(posix).parts:
        raise UnsafeArchiveError(
            f"archive {archive}: member {name!r} contains '..'; refusing to extract"
        )


def _check_link(archive: Path, name: str, target: str, *, hard: bool) -> None:
    posix = target.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(
            f"archive {archive}: link {name!r} points to absolute path {target!r}; refusing to extract"
        )
    # Symlink targets are relative to the link's folder; hard-link targets to the archive root.
    base = "" if hard else posixpath.dirname(name.replace("\\", "/"))
    resolved = posixpath.normpath(posixpath.join(base, posix))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"archive {archive}: link {name!r} -> {target!r} points outside the extraction folder; "
            "refusing to extract"
        )


def check_tar_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    for member in members:
        _check_name(archive, member.name)
        if member.issym() or member.islnk():
            _check_link(archive, member.name, member.linkname, hard=member.islnk())
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"archive {archive}: member {member.name!r} is a device or FIFO; refusing to extract"
            )


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def check_zip_members(archive: Path, handle: zipfile.ZipFile) -> None:
    for info in handle.infolist():
        _check_name(archive, info.filename)
        if _zip_is_symlink(info):
            target = handle.read(info).decode("utf-8", "replace")
            _check_link(archive, info.filename, target, hard=False)


def extract_archive(archive: Path, root: Path) -> list[Path]:
    """Unpack ``archive`` (tar, tar.gz/bz2/xz or zip) into ``root`` safely and atomically.

    Returns the top-level paths created in ``root``. Refuses (before writing anything) members
    that would escape ``root``, and top-level names that already exist there.
    """
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".qbench-extract-", dir=root))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                check_zip_members(archive, handle)
                for info in handle.infolist():
                    if _zip_is_symlink(info):
                        continue  # zip links are rare in datasets; never materialise them
                    handle.extract(info, staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as handle:
                members = handle.getmembers()
                check_tar_members(archive, members)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (PEP 706)
                    handle.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - older interpreters; members were checked above
                    handle.extractall(staging, members=members)
        else:
            raise CorruptArchiveError(f"archive {archive}: not a tar or zip file")
        entries = sorted(staging.iterdir())
        clashes = [e.name for e in entries if (root / e.name).exists()]
        if clashes:
            raise QBenchError(
                f"archive {archive}: {root / clashes[0]} already exists; remove it to unpack again"
            )
        created = []
        for entry in entries:
            os.replace(entry, root / entry.name)
            created.append(root / entry.name)
        return created
    except _CORRUPT as exc:
        # A truncated or damaged archive: the staging folder goes away below.
        raise CorruptArchiveError(
            f"archive {archive}: extraction failed, truncated or damaged "
            f"({type(exc).__name__}: {exc})"
        ) from None
    except OSError as exc:  # a full disk, no permission: the archive itself may be fine
        raise QBenchError(
            f"archive {archive}: extraction failed ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name or name in (".", ".."):
        raise QBenchError(f"--url {url!r} does not end in an archive file name")
    return name


def fetch_dataset(
    source: Source,
    root: Path,
    *,
    url: str | None = None,
    progress: bool = True,
    retries: int = 3,
) -> Path:
    """Download ``source`` (or ``url``) into ``root`` and unpack it; returns the dataset folder.

    An already unpacked dataset is left alone. With ``url`` (a mirror) the checksum is checked
    only if the URL is the published one, since a mirror may repackage the archive.
    """
    root = Path(root).expanduser()
    target = root / source.folder
    if url is None and target.is_dir():
        if progress:
            print(f"{source.name}: {target} already exists", file=sys.stderr)
        return target
    chosen = url or source.url
    md5 = source.md5 if chosen == source.url else None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QBenchError(f"--root {root}: cannot create it ({exc.strerror})") from None
    archive = root / _archive_name(chosen)
    for last_try in (False, True):
        download_file(chosen, archive, md5=md5, progress=progress, retries=retries)
        try:
            created = extract_archive(archive, root)
            break
        except CorruptArchiveError as exc:
            # Never keep an archive that fails to unpack where the next run would take it for
            # a finished download. A checksum-verified one would only come back the same.
            if last_try or md5 is not None:
                corrupt = move_aside(archive)
                raise CorruptArchiveError(
                    f"{exc}; moved to {corrupt} (run again to download it afresh, or pass "
                    "--url to use a mirror)"
                ) from None
            move_aside(archive, str(exc))
    archive.unlink()
    if target in created:
        return target
    folders = [p for p in created if p.is_dir()]
    return folders[0] if len(folders) == 1 else root
