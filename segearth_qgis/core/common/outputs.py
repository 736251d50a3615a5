"""The one output-path guard: an output never lands on an input, on another output of the run, or in a folder
that cannot be written, and this is known before any work starts."""

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .failures import ActionableError

SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
TEMPORARY_VALUES = ("TEMPORARY_OUTPUT", "memory:")


class OutputPathError(ActionableError):
    """An output path that would destroy an input or another output, or cannot be written."""


def _identity(path: str | os.PathLike) -> str:
    """The file a path resolves to: symlinks followed, case folded where the file system folds it (Windows)."""
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(path))))


def written_files(path: str | os.PathLike) -> list[str]:
    """The files an output at ``path`` writes: the file, GDAL's ``.aux.xml`` beside it, a shapefile's parts."""
    path = Path(path)
    files = [path, Path(f"{path}.aux.xml")]
    if path.suffix.lower() == ".shp":
        files += [path.with_suffix(suffix) for suffix in SHAPEFILE_SIDECARS]
    return [str(p) for p in files]


def input_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """An input's files and the sidecars GDAL and QGIS keep beside them (.aux.xml, .ovr, .msk, .qml)."""
    files = []
    for path in paths:
        files += [os.fspath(path), f"{os.fspath(path)}.aux.xml", f"{os.fspath(path)}.ovr", f"{os.fspath(path)}.msk"]
        files.append(str(Path(path).with_suffix(".qml")))
    return files


def _same(first: str, second: str, first_id: str, second_id: str) -> bool:
    if first_id == second_id:
        return True
    try:  # hard links, and case-insensitive volumes on macOS
        return os.path.samefile(first, second)
    except OSError:
        return False


def check_output_paths(inputs: Mapping[str, Iterable[str | os.PathLike]],
                       outputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse, before any work, an output that resolves to an input's file (or one of its sidecars) or to another
    output's files, and an output whose folder cannot be written.

    ``inputs``: parameter name -> the input's files (a raster's own, its VRT sources...); ``outputs``: parameter
    name -> path (None, '' and temporary outputs are skipped).
    """
    named = {name: os.fspath(path) for name, path in outputs.items()
             if path and not os.fspath(path).startswith(TEMPORARY_VALUES)}
    taken = []  # (file, identity, what it belongs to)
    for name, files in inputs.items():
        files = [os.fspath(f) for f in files]
        for file in input_files(files):
            taken.append((file, _identity(file), f"the input {name} ({files[0] if files else ''})"))
    for name, path in named.items():
        mine = [(file, _identity(file)) for file in written_files(path)]
        for file, identity, owner in taken:
            if any(_same(own, file, own_id, identity) for own, own_id in mine):
                raise OutputPathError(f"{name} ({path}) would overwrite {owner}: choose another file name for {name}")
        taken += [(file, identity, f"the output {name} ({path})") for file, identity in mine]
    for name, path in named.items():
        check_writable_folder(name, path)


def check_writable_folder(name: str, path: str | os.PathLike) -> None:
    """The folder of ``path`` exists (or can be made) and takes a new file; says so naming ``path``, not a temporary
    file."""
    folder = Path(path).absolute().parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{name} ({path}): {existing} is a file, not a folder: choose an output in a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".segearth-write-test-"):
            pass
    except OSError as error:
        raise OutputPathError(f"{name} ({path}) cannot be written: the folder {existing} is read-only or not yours "
                              f"({error.strerror}); choose an output in a folder you can write to") from error
