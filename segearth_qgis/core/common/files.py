"""Files written whole or not at all, and their SHA-256: the one helper of each kind for every room of the plugin."""

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from . import signals

CHUNK_BYTES = 1 << 20


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A hidden name beside ``path`` with its suffix (GDAL and OGR choose the driver by it), unique per call."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the ``with`` body to write; it replaces ``path`` when the body ends
    without an error and is deleted otherwise, so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(path)
    try:
        with signals.in_flight(temp):
            yield temp
            os.replace(temp, path)
    except OSError as error:
        if error.filename is None or Path(error.filename) != temp:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error  # name the output, not its hidden temp
    finally:
        temp.unlink(missing_ok=True)


def disk_full_error(path: str | os.PathLike, error: Exception) -> OSError | None:
    """An ENOSPC OSError naming ``path`` when ``error`` (often a GDAL RuntimeError without an errno) came from a
    full disk: its text says so, or the folder has less than a block left."""
    text = str(error).lower()
    folder = Path(path).absolute().parent
    try:
        nearly_full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        nearly_full = False
    if nearly_full or "no space left" in text or "disk full" in text or "free disk space" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path."""
    with atomic_path(path) as temp:
        if isinstance(data, bytes):
            temp.write_bytes(data)
        else:
            temp.write_text(data, encoding=encoding)
    return Path(path)


def sha256_digest(path: str | os.PathLike, after_block: Callable[[], None] | None = None) -> "hashlib._Hash":
    """The running SHA-256 of the file at ``path``; ``after_block()`` runs after each chunk (e.g. a cancel check)."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
            if after_block is not None:
                after_block()
    return digest


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file at ``path``."""
    return sha256_digest(path).hexdigest()
