"""Where images and outputs live: local paths or fsspec URLs (``s3://``, ``gs://``, ...).

A location is a string: an absolute local path, or a URL without a trailing slash
(``file://`` URLs become local paths). Object stores have no directories and no atomic
``mkdir``: a "directory" exists when some key lies under its prefix, and claiming a new
output writes a marker object with an exclusive create (``If-None-Match: *`` on S3).
Credentials and endpoints come from the environment as each filesystem reads them
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import posixpath
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from raysegment.errors import ConfigError, OutputError

__all__ = [
    "Location",
    "basename",
    "claim",
    "each",
    "exists",
    "is_dir",
    "is_url",
    "join",
    "listdir",
    "open_read",
    "open_write",
    "parent",
    "read_bytes",
    "read_ranges",
    "remove",
    "resolve",
    "size",
    "storage_error",
    "storage_errors",
    "touch",
    "write_bytes",
]

_CLAIM = ".raysegment/claim"

Location = str | os.PathLike[str]
"""A local path or an fsspec URL."""

_FIXES = {
    errno.ENOSPC: "free space there",
    errno.EDQUOT: "free space within the quota",
    errno.EROFS: "make it writable",
    errno.EACCES: "make it writable",
    errno.EPERM: "make it writable",
    errno.EIO: "check the storage device",
}
"""What a user does about the storage errors a run can meet writing its output, a full disk
on the way through a large volume, a quota, a volume remounted read-only: anything else is
raised as it is (a bug keeps its traceback)."""


def storage_error(
    error: BaseException, path: Location, what: str, then: str, key: str = "output"
) -> OutputError | None:
    """The one-line ``OutputError`` for a storage error of ``_FIXES`` that ``error`` is or
    was caused by, met writing ``what`` into ``path`` (the setting ``key`` names; the
    directory of the file the error names, where that lies elsewhere, as a process's
    temporary directory); ``then``: what the same command does when run again. None for
    any other error."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FIXES:
            where, fix = os.fspath(path), _FIXES[e.errno]
            file = os.fspath(e.filename) if isinstance(e.filename, (str, os.PathLike)) else ""
            if file and not is_url(where) and not file.startswith(where.rstrip("/") + "/"):
                where = os.path.dirname(file) or file
            elif e.errno != errno.EIO:
                fix += f" or give another {key}="
            return OutputError(
                f"{where}: {os.strerror(e.errno)} writing {what}; {fix}, then run the same "
                f"command again: {then}"
            )
        todo += [e.__cause__, e.__context__]
    return None


@contextlib.contextmanager
def storage_errors(path: Location, what: str, then: str) -> Iterator[None]:
    """Raise a storage error of ``_FIXES`` met in the body, writing ``what`` into the output
    ``path``, as a one-line ``OutputError`` (``storage_error``); others as they are."""
    try:
        yield
    except OSError as e:
        error = storage_error(e, path, what, then)
        if error is None:
            raise
        raise error from e


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


SOURCE_PREFIXES = ("precomputed://", "n5://", "zarr://", "zarr2://", "zarr3://")
"""Neuroglancer's data-source prefixes (``precomputed://gs://bucket/vol``): a layer's source
pasted as is names the location after them; the format is read from the data itself."""


def resolve(location: str | os.PathLike[str]) -> str:
    """A location's canonical form: local paths absolute, URLs without a trailing slash,
    without a Neuroglancer data-source prefix."""
    text = str(location)
    for prefix in SOURCE_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_url(text):
        return text.rstrip("/")
    return str(Path(text).resolve())


def join(location: str, *names: str) -> str:
    if is_url(location):
        return "/".join([location.rstrip("/"), *names])
    return str(Path(location, *names))


def parent(location: str) -> str:
    if is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def basename(location: str) -> str:
    return posixpath.basename(location.rstrip("/")) if is_url(location) else Path(location).name


def _fs(location: str) -> tuple[Any, str]:
    """The URL's filesystem and the path within it, with the cached listings of that path
    and its parents dropped (other processes write there too)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
    except ImportError as e:  # fsspec names the package the URL's scheme needs
        scheme = location.split("://", 1)[0]
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
        fix = f"pip install 'raysegment[{extra}]'" if extra else str(e)
        raise ConfigError(
            f"{location}: {scheme}:// URLs need a package not installed: {fix} (N5 and "
            f"Neuroglancer precomputed volumes: pip install 'raysegment[tensorstore]')"
        ) from e
    fs.invalidate_cache(path)
    return fs, path


def exists(location: str) -> bool:
    if not is_url(location):
        return os.path.exists(location)
    fs, path = _fs(location)
    return bool(fs.exists(path))


def is_dir(location: str) -> bool:
    """A local directory, or a prefix with keys under it."""
    if not is_url(location):
        return os.path.isdir(location)
    fs, path = _fs(location)
    return bool(fs.isdir(path))


def listdir(location: str) -> list[str]:
    """Names directly under ``location`` (none when it does not exist)."""
    if not is_url(location):
        return os.listdir(location) if os.path.isdir(location) else []
    fs, path = _fs(location)
    if not fs.isdir(path):
        return []
    return [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]


def claim(location: str) -> bool:
    """Create ``location`` for this caller only: False when it already exists.

    Local: an atomic ``mkdir``. Object stores: an exclusive create of a marker object
    under it, after checking that nothing else lies there.
    """
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        try:
            Path(location).mkdir()
        except FileExistsError:
            return False
        return True
    fs, path = _fs(location)
    if fs.exists(path):
        return False
    # Who claimed it, for whoever finds a claim with no output behind it. (Not empty:
    # s3fs writes an empty file without the exclusive-create condition.)
    who = f"{socket.gethostname()} pid {os.getpid()} at {time.time():.0f}\n".encode()
    try:
        with fs.open(f"{path}/{_CLAIM}", "xb") as f:
            f.write(who)
    except FileExistsError:
        return False
    return True


def remove(location: str) -> None:
    """Remove ``location`` and everything under it, if it exists."""
    if not is_url(location):
        if os.path.isdir(location):
            shutil.rmtree(location, ignore_errors=True)
        elif os.path.exists(location):
            os.remove(location)
        return
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def touch(location: str) -> None:
    """Create an empty file (its local parent directories too)."""
    write_bytes(location, b"")


def read_bytes(location: str) -> bytes:
    if not is_url(location):
        return Path(location).read_bytes()
    fs, path = _fs(location)
    return bytes(fs.cat_file(path))


READ_BLOCK = 2**20
"""Bytes an object store's file is fetched in when read piece by piece (a TIFF's
directories): small enough that a slide's few directories cost little, large enough that
neighbouring ones come in one request."""


T = TypeVar("T")

URL_THREADS = 16
"""Requests ``each`` sends at once to object stores and web servers."""


def each(read: Callable[[str], T], locations: Sequence[str]) -> list[T]:
    """``read`` of every location, in their order: ``URL_THREADS`` at a time where any is
    a URL (each request waits out a round trip), else one after another."""
    threads = URL_THREADS if any(is_url(loc) for loc in locations) else 1
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(read, locations))


def open_read(location: str, block: int = READ_BLOCK) -> Any:
    """A seekable binary file to read ``location`` from (an object store's through a cache
    of ``block``-byte blocks; the caller closes a local one)."""
    if not is_url(location):
        return open(location, "rb")  # noqa: SIM115 (the caller closes it)
    fs, path = _fs(location)
    return fs.open(path, "rb", block_size=block, cache_type="blockcache")


def size(location: str) -> int:
    """The size of the file ``location`` in bytes."""
    if not is_url(location):
        return os.path.getsize(location)
    fs, path = _fs(location)
    return int(fs.size(path))


RANGE_GAP = 2**18
"""Ranges of a file fetched together when at most this many bytes lie between them: a
request costs an object store's time to first byte (~20-100 ms), in which it would have
sent megabytes; a region's tiles of a slide lie side by side."""

RANGE_MERGED = 2**24
"""The most bytes one merged request fetches: a large region still comes in several
concurrent requests."""


def read_ranges(location: str, starts: list[int], ends: list[int]) -> list[bytes]:
    """The bytes ``starts[i]:ends[i]`` of the file ``location``: from an object store in
    concurrent requests (one round trip for a region's tiles, not one each), neighbouring
    ranges in one request (``RANGE_GAP``, ``RANGE_MERGED``)."""
    if not is_url(location):
        with open(location, "rb") as f:
            return [os.pread(f.fileno(), b - a, a) for a, b in zip(starts, ends, strict=True)]
    merged: list[list[int]] = []  # [start, end] of each request
    for a, b in sorted(zip(starts, ends, strict=True)):
        if merged and a - merged[-1][1] <= RANGE_GAP and b - merged[-1][0] <= RANGE_MERGED:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    fs, path = _fs(location)
    fetched = fs.cat_ranges(
        [path] * len(merged), [a for a, _ in merged], [b for _, b in merged], on_error="raise"
    )
    firsts = [a for a, _ in merged]
    out = []
    for a, b in zip(starts, ends, strict=True):
        k = bisect.bisect_right(firsts, a) - 1  # the request that holds it
        out.append(bytes(fetched[k][a - firsts[k] : b - firsts[k]]))
    return out


def open_write(location: str) -> Any:
    """A binary file to write ``location`` through, piece by piece (its local parent
    directories made; an object store's upload completes when it is closed)."""
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return open(location, "wb")  # noqa: SIM115 (the caller closes it)
    fs, path = _fs(location)
    return fs.open(path, "wb")


def write_bytes(location: str, data: bytes) -> None:
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)
        return
    fs, path = _fs(location)
    fs.pipe_file(path, data)
