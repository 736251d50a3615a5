"""Model bundles: a folder (or a zip of it) holding everything inference needs, with a manifest of SHA-256 hashes.

A bundle is what a user downloads, copies to an offline machine, or selects in a dialog. Its name is its folder's
name. Loading verifies every file against the manifest first, so a damaged or altered file is named, never used.
The model store (store.py) keeps installed bundles; the loader (loader.py) runs them.
"""

import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from ..common.choices import MODALITIES
from ..common.files import CHUNK_BYTES, atomic_path, sha256_file

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


# What the backends, the store and training read from a manifest (export_bundle writes them all).
REQUIRED_KEYS = ("modality", "files", "patch_size", "embed_dim", "context_length", "image_mean", "image_std",
                 "prompt_templates", "upsampler", "attention", "last_n", "activation", "gba_lambda")
REQUIRED_FILES = (VISUAL, TEXT, POSITIONS, VOCAB)
UPSAMPLER_FILES = (KERNELS, APPLY, FIXUP, WEIGHTS)
DAMAGED = "the bundle is damaged: copy or download it again"


def _safe_relative(name: str) -> bool:
    """A relative path that stays inside its folder on every system: no root, drive, backslash, '.' or '..'."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and ":" not in name and not {"", ".", ".."} & set(parts)


def _file_entry(name: object, entry: object) -> bool:
    return (isinstance(name, str) and _safe_relative(name) and name != MANIFEST and isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
            and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool) and entry["bytes"] >= 0)


def _parse_manifest(data: bytes, where: str) -> dict:
    """The manifest in ``data`` (read from ``where``), checked for the keys and the file list its users read."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BundleError(f"{where} is not UTF-8 text ({error.reason} at byte {error.start}): {DAMAGED}") from error
    except json.JSONDecodeError as error:
        raise BundleError(f"{where} is not valid JSON ({error}): {DAMAGED}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a SegEarth-OV bundle manifest: choose the manifest.json of a bundle "
                          "exported by this plugin")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int):
        raise BundleError(f"{where} has format_version {version!r}, not a number: {DAMAGED}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where} has bundle format {version}, newer than this plugin reads ({FORMAT_VERSION}): "
                          "update the plugin")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"{where} lacks {', '.join(missing)}: {DAMAGED}")
    if manifest["modality"] not in MODALITIES:
        raise BundleError(f"{where} has modality {manifest['modality']!r}, not one of {', '.join(MODALITIES)}: "
                          f"{DAMAGED}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(_file_entry(name, entry) for name, entry in files.items()):
        raise BundleError(f"{where}: \"files\" must map each file's relative path inside the bundle to its sha256 "
                          f"(64 hex digits) and bytes: {DAMAGED}")
    needed = REQUIRED_FILES + (UPSAMPLER_FILES if manifest["upsampler"] is not None else ())
    unlisted = [name for name in needed if name not in files]
    if unlisted:
        raise BundleError(f"{where} does not list {', '.join(unlisted)}: {DAMAGED}")
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked manifest of the bundle folder ``folder``; BundleError naming the file and what to do."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle: it has no {MANIFEST}; choose a bundle's folder (the one "
                          f"holding {MANIFEST}) or its .zip")
    return _parse_manifest(path.read_bytes(), str(path))


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


MAX_BUNDLE_BYTES = 8 << 30  # what a zip may unpack to: a ViT-L bundle with its checkpoints is about 3.5 GB
MAX_MANIFEST_BYTES = 16 << 20
MAX_RATIO = 100  # model weights barely compress; a zip that inflates more than this is not a bundle
CHOOSE_ZIP = "choose a bundle's zip as exported or downloaded"
IGNORED_PREFIXES = ("__MACOSX/",)  # what macOS adds when it zips a folder: not extracted
IGNORED_NAMES = (".DS_Store",)


def resolve_bundle(path: str | os.PathLike) -> Path:
    """A bundle folder for ``path``: the folder itself (or its manifest), or a zip unpacked once into the cache after
    every member was checked against the zip's manifest; BundleError naming the file and what to do otherwise."""
    path = Path(path)
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    if not path.exists():
        raise BundleError(f"{path} does not exist: choose a bundle's {MANIFEST} or its .zip")
    if not path.is_file() or not zipfile.is_zipfile(path):
        if path.suffix.lower() == ".zip":
            raise BundleError(f"{path} is not a readable zip (damaged or incomplete): download or copy it again")
        raise BundleError(f"{path} is neither a bundle folder nor a bundle zip: choose a bundle's {MANIFEST} or its "
                          ".zip")
    target = cache_root() / "bundles" / f"{path.stem}-{sha256_file(path)[:12]}"
    if (target / MANIFEST).is_file():
        return target
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(path, archive)
            if target.exists() and not (target / MANIFEST).is_file():  # not an unpacking: those appear whole
                shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:  # removed on any failure, interrupts included
                for info, relative in members:
                    _extract(path, archive, info, staging / relative)
                _publish(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise BundleError(f"{path} cannot be unpacked ({error}): download or copy it again") from error
    return target


def _ignored(name: str) -> bool:
    return name.startswith(IGNORED_PREFIXES) or name.rsplit("/", 1)[-1] in IGNORED_NAMES


def _checked_members(path: Path, archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """The zip's files as (member, path in the bundle), each checked against the zip's manifest: listed, of the
    listed size, a plain file inside the bundle's folder; in all no more than a bundle holds or model files inflate."""
    infos = [info for info in archive.infolist() if not _ignored(info.filename)]
    manifests = [info for info in infos if info.filename == MANIFEST or
                 (info.filename.count("/") == 1 and info.filename.endswith(f"/{MANIFEST}"))]
    if len(manifests) != 1:
        raise BundleError(f"{path} holds no bundle: it needs one {MANIFEST}, at its root or in one folder at its "
                          f"root; {CHOOSE_ZIP}")
    manifest_info = manifests[0]
    prefix = manifest_info.filename[:-len(MANIFEST)]
    if manifest_info.file_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {manifest_info.filename} is {manifest_info.file_size} bytes, too large for a "
                          f"manifest; {CHOOSE_ZIP}")
    manifest = _parse_manifest(archive.read(manifest_info), f"{path}: {manifest_info.filename}")
    sizes = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    sizes[MANIFEST] = manifest_info.file_size
    declared = sum(sizes.values())
    if declared > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: its {MANIFEST} lists {declared / 2**30:.1f} GiB of files, more than a bundle "
                          f"holds ({MAX_BUNDLE_BYTES / 2**30:.0f} GiB); {CHOOSE_ZIP}")
    members, seen = [], set()
    for info in infos:
        name = info.filename
        if not _safe_relative(name.removesuffix("/")):
            raise BundleError(f"{path} has a member {name!r} that would land outside the bundle's folder; "
                              f"{CHOOSE_ZIP}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"{path} has a symbolic link {name!r}, which no bundle holds; {CHOOSE_ZIP}")
        if info.is_dir():
            if not (name.startswith(prefix) or prefix.startswith(name)):
                raise BundleError(f"{path} has a folder {name!r} outside the bundle's folder; {CHOOSE_ZIP}")
            continue
        relative = name[len(prefix):] if name.startswith(prefix) else None
        if relative not in sizes:
            raise BundleError(f"{path} has a file {name!r} that its {MANIFEST} does not list; {CHOOSE_ZIP}")
        if relative in seen:
            raise BundleError(f"{path} holds {name!r} twice; {CHOOSE_ZIP}")
        if info.file_size != sizes[relative]:
            raise BundleError(f"{path}: {name} unpacks to {info.file_size} bytes but its {MANIFEST} lists "
                              f"{sizes[relative]}; {CHOOSE_ZIP}")
        if info.flag_bits & 0x1:
            raise BundleError(f"{path}: {name} is encrypted, which no bundle is; {CHOOSE_ZIP}")
        seen.add(relative)
        members.append((info, relative))
    inflated = sum(info.file_size for info, _ in members)
    if inflated > MAX_RATIO * path.stat().st_size:
        raise BundleError(f"{path} would inflate to {inflated / 2**20:.0f} MiB from {path.stat().st_size / 2**20:.1f} "
                          f"MiB, far more than model files compress (a zip bomb?); {CHOOSE_ZIP}")
    return members


def _extract(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path) -> None:
    """Write one member, stopping as soon as it inflates past its size (the header's, checked against the manifest)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(info) as source, open(destination, "wb") as out:
        while block := source.read(CHUNK_BYTES):
            written += len(block)
            if written > info.file_size:
                raise BundleError(f"{path}: {info.filename} inflates past the {info.file_size} bytes its {MANIFEST} "
                                  f"lists; {CHOOSE_ZIP}")
            out.write(block)


def _publish(staging: Path, target: Path) -> None:
    """Rename the unpacked bundle into place; another process that unpacked the same zip first wins."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST).is_file():
            raise


def zip_bundle(folder: str | os.PathLike, zip_path: str | os.PathLike | None = None) -> Path:
    """Zip a bundle folder with the folder at the zip's root; written to a temporary name, then renamed."""
    folder = Path(folder)
    zip_path = Path(zip_path) if zip_path else folder.with_suffix(".zip")
    with atomic_path(zip_path) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return zip_path
