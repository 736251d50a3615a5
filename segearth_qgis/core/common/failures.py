"""One sentence for any failure that reaches a user: what is wrong and what to do, the traceback only on request."""

import errno

from .feedback import Cancelled

INSTALL_HINT = ("install the plugin's dependencies (Processing Toolbox > SegEarth-OV > Install dependencies, or "
                "python3 build.py setup)")
OUT_OF_MEMORY = "out of memory: choose a smaller extent or a coarser RESOLUTION, or close other programs"
CANCELLED = "cancelled: no output was written"


class ActionableError(Exception):
    """An error whose text is already the sentence a user should read: what is wrong and what to do."""


def _os_sentence(error: OSError) -> str:
    name = f" {error.filename}" if error.filename else ""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        return f"the disk is full (writing{name}): free some space or choose an output folder on another disk"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for{name}: choose a file or folder you can write to"
    if error.errno == errno.ENOENT:
        return f"{name.strip() or 'a file'} does not exist: check the path"
    return f"{reason}{':' + name if name else ''}"


def failure_sentence(error: BaseException, traceback_hint: str) -> str:
    """The one sentence for ``error``; ``traceback_hint`` says where the traceback is (e.g. 'run again with
    --debug for the traceback'), for errors the plugin did not foresee."""
    if isinstance(error, (Cancelled, KeyboardInterrupt)):
        return CANCELLED
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f"the Python package {error.name.split('.')[0]} is missing: {INSTALL_HINT}"
    if isinstance(error, (ActionableError, ValueError, ImportError)):
        return str(error)
    if isinstance(error, MemoryError):
        return OUT_OF_MEMORY
    if isinstance(error, OSError):  # raised by the plugin with a sentence (errno None) or by the system
        return str(error) if error.errno is None else _os_sentence(error)
    return f"unexpected {type(error).__name__}: {error}; {traceback_hint}: please report it"
