"""Model bundles: a folder (or a zip of it) holding everything inference needs, with a manifest of SHA-256 hashes.

A bundle is what a user downloads, copies to an offline machine, or selects in a dialog. Its name is its folder's
name. Loading verifies every file against the manifest first, so a damaged or altered file is named, never used.
The model store (store.py) keeps installed bundles; the loader (loader.py) runs them.
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..common.files import atomic_path, sha256_file

FORMAT = "segearth-ov-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VISUAL = "visual_encoder.onnx"
TEXT = "text_encoder.onnx"
KERNELS = "simfeatup_kernels.onnx"
APPLY = "simfeatup_apply.onnx"
FIXUP = "simfeatup_fixup.onnx"
WEIGHTS = "simfeatup_weights.npz"
POSITIONS = "positional_embedding.npy"
VOCAB = "bpe_simple_vocab_16e6.txt.gz"
TORCH_DIR = "torch"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and says what to do."""


def file_entries(folder: str | os.PathLike) -> dict[str, dict[str, str | int]]:
    """``{relative path: {"sha256", "bytes"}}`` for every file in the bundle except the manifest."""
    folder = Path(folder)
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path} is not valid JSON ({error}): the bundle is damaged, copy it again") from error
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a SegEarth-OV bundle manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{folder} has bundle format {manifest.get('format_version')}, newer than this plugin "
                          f"reads ({FORMAT_VERSION}): update the plugin")
    return manifest


_VERIFIED = {}


def _signature(folder: Path, manifest: dict) -> tuple[tuple[int, int] | None, ...]:
    """Sizes and modification times of the manifest and every listed file: unchanged means already verified."""
    paths = [folder / MANIFEST, *(folder / name for name in manifest["files"])]
    return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in paths)


def verify_bundle(folder: str | os.PathLike) -> dict:
    """Check every listed file's presence and SHA-256 (once per process while the files stay unchanged)."""
    folder = Path(folder).resolve()
    manifest = read_manifest(folder)
    signature = _signature(folder, manifest)
    if _VERIFIED.get(folder) == signature:
        return manifest
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"bundle {folder.name}: {name} is missing; copy the whole bundle again")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"bundle {folder.name}: {name} does not match its SHA-256 in {MANIFEST} (damaged or "
                              "altered); copy or download the bundle again")
    _VERIFIED[folder] = signature
    return manifest


def cache_root() -> Path:
    return Path(os.environ.get("SEGEARTH_CACHE_DIR") or Path.home() / ".cache" / "segearth-qgis")


def resolve_bundle(path: str | os.PathLike) -> Path:
    """A bundle folder for ``path``: the folder itself (or its manifest), or a zip unpacked once into the cache."""
    path = Path(path)
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a bundle folder nor a bundle zip")
    target = cache_root() / "bundles" / f"{path.stem}-{sha256_file(path)[:12]}"
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise BundleError(f"{path}: unsafe member path {member!r}")
            archive.extractall(staging)
        manifests = list(staging.glob(MANIFEST)) or list(staging.glob(f"*/{MANIFEST}"))
        if len(manifests) != 1:
            raise BundleError(f"{path} holds no bundle: {MANIFEST} must be at its root or in one folder at its root")
        os.replace(manifests[0].parent, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def zip_bundle(folder: str | os.PathLike, zip_path: str | os.PathLike | None = None) -> Path:
    """Zip a bundle folder with the folder at the zip's root; written to a temporary name, then renamed."""
    folder = Path(folder)
    zip_path = Path(zip_path) if zip_path else folder.with_suffix(".zip")
    with atomic_path(zip_path) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return zip_path
