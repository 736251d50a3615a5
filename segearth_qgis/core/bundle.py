"""Model bundles: a folder (or a zip of it) holding everything inference needs, with a manifest of SHA-256 hashes.

A bundle is what a user downloads, copies to an offline machine, or selects in a dialog. Its name is its folder's
name. Loading verifies every file against the manifest first, so a damaged or altered file is named, never used.
"""

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

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


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder):
    """``{relative path: {"sha256", "bytes"}}`` for every file in the bundle except the manifest."""
    folder = Path(folder)
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def read_manifest(folder):
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


def _signature(folder, manifest):
    """Sizes and modification times of the manifest and every listed file: unchanged means already verified."""
    paths = [folder / MANIFEST, *(folder / name for name in manifest["files"])]
    return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in paths)


def verify_bundle(folder):
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


DEFAULT_BUNDLES = {"optical": "segearth-ov-vit-b-16", "sar": "alignearth-sar-vit-b-16"}
DEFAULTS_FILE = "defaults.json"


_CONFIGURED_STORE = {"path": None}


def configure_model_store(path):
    """The store folder a front end chose (the plugin's Processing setting); None goes back to the default."""
    _CONFIGURED_STORE["path"] = Path(path) if path else None


def model_store():
    """Where installed models live: ``SEGEARTH_MODEL_DIR``, else the folder ``configure_model_store`` was given, else
    the user's data folder (outside the plugin, so upgrading the plugin keeps them)."""
    override = os.environ.get("SEGEARTH_MODEL_DIR")
    if override:
        return Path(override)
    if _CONFIGURED_STORE["path"] is not None:
        return _CONFIGURED_STORE["path"]
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "segearth-qgis" / "models"


def chosen_defaults():
    """``{modality: bundle name}`` chosen in the store (``defaults.json``); empty when none was chosen."""
    try:
        chosen = json.loads((model_store() / DEFAULTS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in chosen.items() if k in DEFAULT_BUNDLES and isinstance(v, str)}


def set_default_bundle(modality, name):
    """Make the installed bundle ``name`` the default model for ``modality`` imagery."""
    if not (model_store() / name / MANIFEST).is_file():
        raise BundleError(f"no bundle named {name} is installed in {model_store()}")
    chosen = {**chosen_defaults(), modality: name}
    path = model_store() / DEFAULTS_FILE
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(chosen, indent=1))
    os.replace(partial, path)


def default_bundle(modality):
    """The installed default bundle for ``optical`` or ``sar`` imagery; BundleError saying how to get one."""
    if modality not in DEFAULT_BUNDLES:
        raise ValueError(f"modality must be optical or sar, not {modality!r}")
    folder = model_store() / (chosen_defaults().get(modality) or DEFAULT_BUNDLES[modality])
    if (folder / MANIFEST).is_file():
        return folder
    raise BundleError(
        f"no default {modality} model is installed (looked for {folder}). With internet: run the Processing "
        f"algorithm 'Install a model' (segearth:install_model, SOURCE={modality}) or python3 build.py models download "
        f"{modality}. Offline: do that on a connected machine, copy the bundle folder or zip from its model folder "
        "over, and install it with segearth:install_model (BUNDLE=...) or python3 build.py models install BUNDLE.zip. "
        "Or choose a bundle (a folder with manifest.json, or its .zip) as MODEL.")


def load_model(path=None, modality="optical", backend="auto", device="auto"):
    """``load_bundle`` of ``path``, or of the installed default model for ``modality`` when ``path`` is empty."""
    return load_bundle(path or default_bundle(modality), backend, device)


def cache_root():
    return Path(os.environ.get("SEGEARTH_CACHE_DIR") or Path.home() / ".cache" / "segearth-qgis")


def resolve_bundle(path):
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


def zip_bundle(folder, zip_path=None):
    """Zip a bundle folder with the folder at the zip's root; written to a temporary name, then renamed."""
    folder = Path(folder)
    zip_path = Path(zip_path) if zip_path else folder.with_suffix(".zip")
    partial = zip_path.with_name(f".{zip_path.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    os.replace(partial, zip_path)
    return zip_path


def load_bundle(path, backend="auto", device="auto"):
    """A model ``segment_image`` accepts, from a bundle folder or zip; its ``runtime`` says what actually runs.

    ``backend``: ``onnx`` (onnxruntime), ``torch`` (needs the bundle's checkpoints) or ``auto`` (onnx, else torch
    when onnxruntime is missing or fails, with the reason in the report). ``device``: ``auto``, ``cuda`` or ``cpu``.
    """
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"backend must be auto, onnx or torch, got {backend!r}")
    folder = resolve_bundle(path)
    manifest = verify_bundle(folder)
    if backend == "torch":
        return _load_torch(folder, manifest, device, "")
    try:
        from .onnx_backend import OnnxModel

        return OnnxModel(folder, manifest, device)
    except ImportError as error:
        if backend == "onnx" or not manifest.get("torch"):  # nothing else could run it: onnxruntime is what is missing
            raise
        return _load_torch(folder, manifest, device, f"auto: onnxruntime unavailable ({error})")


def _load_torch(folder, manifest, device, note):
    checkpoints = manifest.get("torch")
    if not checkpoints:
        raise BundleError(f"bundle {folder.name} was exported without checkpoints, so it cannot run on the torch "
                          "backend: use the onnx backend, or export it again without --no-checkpoints")
    try:
        import torch

        from .torch_model import load_model_from_checkpoints
    except ImportError as error:
        if not note:  # the torch backend was asked for
            raise
        raise ImportError("neither onnxruntime nor torch can run here: install onnxruntime (pip install "
                          "onnxruntime-gpu, or onnxruntime on machines without an NVIDIA GPU)",
                          name="onnxruntime") from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        from .runtime import DeviceUnavailable

        raise DeviceUnavailable("CUDA was requested but torch sees no usable CUDA GPU here: choose device 'cpu' or "
                                "'auto'")
    upsampler = checkpoints.get("upsampler")
    model = load_model_from_checkpoints(clip=folder / checkpoints["clip"],
                                        upsampler=folder / upsampler if upsampler else None,
                                        arch=str(folder / checkpoints["arch"]),
                                        quick_gelu=manifest["activation"] == "quick_gelu",
                                        attention=manifest["attention"], last_n=manifest["last_n"], device=device)
    from .runtime import RuntimeReport

    model.runtime = RuntimeReport("torch", device, [f"torch:{device}"], f"torch {torch.__version__}", note)
    model.manifest = manifest
    model.bundle = folder
    return model
