"""Temporary files and folders in flight, removed when SIGTERM or SIGHUP ends the process, which then dies of it."""

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

# SIGHUP is POSIX only
CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

# path -> how many holders registered it; re-entrant, as the handler may interrupt a holder in the main thread
_LOCK = threading.RLock()
_IN_FLIGHT: dict[Path, int] = {}


def register(*paths: str | os.PathLike) -> None:
    """Count each path as in flight: a cleanup signal removes it until as many ``unregister`` calls were made."""
    with _LOCK:
        for path in paths:
            path = Path(path)
            _IN_FLIGHT[path] = _IN_FLIGHT.get(path, 0) + 1


def unregister(*paths: str | os.PathLike) -> None:
    """Undo one ``register`` of each path; a path not (or no longer) registered is ignored."""
    with _LOCK:
        for path in paths:
            path = Path(path)
            count = _IN_FLIGHT.pop(path, 0)
            if count > 1:
                _IN_FLIGHT[path] = count - 1


@contextlib.contextmanager
def in_flight(*paths: str | os.PathLike) -> Iterator[None]:
    """``paths`` are registered for the ``with`` body (whether or not they exist yet)."""
    register(*paths)
    try:
        yield
    finally:
        unregister(*paths)


def registered() -> list[Path]:
    """The paths in flight now."""
    with _LOCK:
        return sorted(_IN_FLIGHT)


def remove_registered() -> None:
    """Delete every path in flight, files and folders alike; errors are ignored (the process is about to end)."""
    for path in registered():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _remove_and_die(signum: int, _frame: object) -> None:
    remove_registered()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # the default action now: the exit status says which signal ended the process


def install_cleanup_handlers() -> list[int]:
    """From the main thread, handle SIGTERM and SIGHUP (where they exist, and only where nobody else handles them):
    remove what is in flight, then die of the signal. Idempotent; elsewhere than the main thread it does nothing.
    Returns the signals handled so."""
    if threading.current_thread() is not threading.main_thread():
        return []
    for signum in CLEANUP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _remove_and_die)
    return [signum for signum in CLEANUP_SIGNALS if signal.getsignal(signum) is _remove_and_die]
