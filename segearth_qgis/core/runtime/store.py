"""The model store: where installed bundles live, each modality's default, the official weights' sources, their
download and export into default bundles, and offline installs."""

import json
import os
import shutil
import zipfile
from pathlib import Path

from ..common import signals
from ..common.feedback import Feedback, as_feedback
from ..common.files import atomic_write
from ..common.resources import resource_path
from . import bundle as bundle_files
from .bundle import BundleError, verify_bundle

DEFAULT_BUNDLES = {"optical": "segearth-ov-vit-b-16", "sar": "alignearth-sar-vit-b-16"}
DEFAULTS_FILE = "defaults.json"


_CONFIGURED_STORE = {"path": None}


def configure_model_store(path: str | os.PathLike | None) -> None:
    """The store folder a front end chose (the plugin's Processing setting); None goes back to the default."""
    _CONFIGURED_STORE["path"] = Path(path) if path else None


def model_store() -> Path:
    """Where installed models live: ``SEGEARTH_MODEL_DIR``, else the folder ``configure_model_store`` was given, else
    the user's data folder (outside the plugin, so upgrading the plugin keeps them)."""
    override = os.environ.get("SEGEARTH_MODEL_DIR")
    if override:
        return Path(override)
    if _CONFIGURED_STORE["path"] is not None:
        return _CONFIGURED_STORE["path"]
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "segearth-qgis" / "models"


def chosen_defaults() -> dict[str, str]:
    """``{modality: bundle name}`` chosen in the store (``defaults.json``); empty when none was chosen."""
    try:
        chosen = json.loads((model_store() / DEFAULTS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in chosen.items() if k in DEFAULT_BUNDLES and isinstance(v, str)}


def set_default_bundle(modality: str, name: str) -> None:
    """Make the installed bundle ``name`` the default model for ``modality`` imagery."""
    if not (model_store() / name / bundle_files.MANIFEST).is_file():
        raise BundleError(f"no bundle named {name} is installed in {model_store()}")
    chosen = {**chosen_defaults(), modality: name}
    atomic_write(model_store() / DEFAULTS_FILE, json.dumps(chosen, indent=1))


def default_bundle(modality: str) -> Path:
    """The installed default bundle for ``optical`` or ``sar`` imagery; BundleError saying how to get one."""
    if modality not in DEFAULT_BUNDLES:
        raise ValueError(f"modality must be optical or sar, not {modality!r}")
    folder = model_store() / (chosen_defaults().get(modality) or DEFAULT_BUNDLES[modality])
    if (folder / bundle_files.MANIFEST).is_file():
        return folder
    raise BundleError(
        f"no default {modality} model is installed (looked for {folder}). With internet: run the Processing "
        f"algorithm 'Install a model' (segearth:install_model, SOURCE={modality}) or python3 build.py models download "
        f"{modality}. Offline: do that on a connected machine, copy the bundle folder or zip from its model folder "
        "over, and install it with segearth:install_model (BUNDLE=...) or python3 build.py models install BUNDLE.zip. "
        "Or choose a bundle (a folder with manifest.json, or its .zip) as MODEL.")


SOURCES_FORMAT = "segearth-ov-model-sources"
DOWNLOADS_DIR = "downloads"


def sources() -> dict:
    """The model sources: ``SEGEARTH_MODEL_SOURCES`` (an enterprise mirror's list) or ``resources/models.json``."""
    path = Path(os.environ.get("SEGEARTH_MODEL_SOURCES") or resource_path("models.json"))
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"the model source list {path} cannot be read ({error}): fix SEGEARTH_MODEL_SOURCES") \
            from error
    if data.get("format") != SOURCES_FORMAT or not isinstance(data.get("files"), dict) or \
            not isinstance(data.get("models"), dict):
        raise BundleError(f"{path} is not a SegEarth-OV model source list (format {SOURCES_FORMAT})")
    for key, model in data["models"].items():
        missing = [data_key for data_key in (model.get("clip"), model.get("upsampler")) if data_key not in
                   data["files"]]
        if missing:
            raise BundleError(f"{path}: model {key} names files that are not listed: {', '.join(map(str, missing))}")
    return data


def installed_bundles() -> list[dict]:
    """The bundles in the store: name, path, modality, size in bytes, and whether each is its modality's default."""
    store = model_store()
    if not store.is_dir():
        return []
    chosen = chosen_defaults()
    found = []
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = bundle_files.read_manifest(folder)
        except BundleError:
            continue
        modality = manifest.get("modality", "optical")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        default = chosen.get(modality, DEFAULT_BUNDLES.get(modality)) == folder.name
        found.append({"name": folder.name, "path": str(folder), "modality": modality, "bytes": size,
                      "default": default})
    return found


def _bundle_name(source: str | os.PathLike) -> str:
    """A bundle's name: its folder's name, or for a zip the folder at its root, else the zip's stem."""
    source = Path(source)
    if source.is_dir() or source.name == bundle_files.MANIFEST:
        return (source.parent if source.name == bundle_files.MANIFEST else source).resolve().name
    with zipfile.ZipFile(source) as archive:
        roots = {Path(name).parts[0] for name in archive.namelist() if name.endswith(bundle_files.MANIFEST)
                 and len(Path(name).parts) == 2}
    return roots.pop() if len(roots) == 1 else source.stem


def install_bundle(source: str | os.PathLike, make_default: bool = True, overwrite: bool = False,
                   feedback: Feedback | None = None) -> Path:
    """Copy a bundle (folder or zip, verified first) into the store; optionally make it its modality's default.
    What was done goes to ``feedback``'s info lines."""
    feedback = as_feedback(feedback)
    folder = bundle_files.resolve_bundle(source)
    name = _bundle_name(source)
    manifest = verify_bundle(folder)
    store = model_store()
    target = store / name
    if target.exists() and not overwrite:
        if target.resolve() != folder.resolve():
            raise FileExistsError(f"a bundle named {name} is already installed in {store}: remove it first, or "
                                  "install with overwrite")
    else:
        store.mkdir(parents=True, exist_ok=True)
        partial = store / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        with signals.in_flight(partial):
            shutil.copytree(folder, partial)
            verify_bundle(partial)
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
        feedback.info(f"installed {name} ({manifest['modality']}) into {target}")
    if make_default:
        set_default_bundle(manifest["modality"], name)
        feedback.info(f"{name} is now the default {manifest['modality']} model")
    return target


def download_model(modality: str, feedback: Feedback | None = None, proxies: dict | None = None,
                   timeout: float = 60.0, retries: int = 5) -> Path:
    """Download the official weights of ``optical`` or ``sar``, export them into the default bundle, return its path.

    The files are verified against a pinned SHA-256, or the one the host publishes; otherwise the hash of the first
    download is recorded in the bundle's manifest. Exporting needs torch and open_clip. Each file's download has an
    equal share of ``feedback``'s progress and the export the last one; ``feedback`` also gets the files' origins,
    licences and hashes, and its cancel stops the downloads.
    """
    from ..common.download import fetch

    feedback = as_feedback(feedback)
    catalogue = sources()
    if modality not in catalogue["models"]:
        raise ValueError(f"no model source for {modality!r}; the list has {', '.join(catalogue['models'])}")
    model = catalogue["models"][modality]
    try:
        from .export import export_bundle
    except ImportError as error:
        raise ImportError(f"exporting the downloaded weights needs torch and open_clip ({error}). Install them, or "
                          "export the bundle on another machine and install it here (models install BUNDLE.zip)"
                          ) from error
    downloads = model_store() / DOWNLOADS_DIR
    fetched = {}
    roles = ("clip", "upsampler")
    share = 1 / (len(roles) + 1)
    for index, role in enumerate(roles):
        entry = catalogue["files"][model[role]]
        feedback.info(f"{entry['filename']}: {entry['origin']}. Licence: {entry['licence']}")
        fetched[role] = fetch(entry["urls"], str(downloads / entry["filename"]), sha256=entry.get("sha256"),
                              size=entry.get("size"), timeout=timeout, retries=retries, proxies=proxies,
                              feedback=feedback.part(index * share, share))
        feedback.info(f"{entry['filename']}: SHA-256 {fetched[role]['sha256']} ({fetched[role]['sha256_source']})")
    source = {role: {"name": model[role], "file": catalogue["files"][model[role]]["filename"],
                     "url": fetched[role]["url"], "sha256": fetched[role]["sha256"],
                     "sha256_source": fetched[role]["sha256_source"],
                     "licence": catalogue["files"][model[role]]["licence"]} for role in roles}
    target = model_store() / model["bundle"]
    export_bundle(fetched["clip"]["path"], fetched["upsampler"]["path"], model["arch"], target,
                  quick_gelu=model["quick_gelu"], attention=model["attention"], last_n=model["last_n"],
                  modality=modality, gba_lambda=model["gba_lambda"], source=source, keep_checkpoints=True,
                  overwrite=True, feedback=feedback.part(len(roles) * share, share))
    for role in roles:
        Path(fetched[role]["path"]).unlink(missing_ok=True)
    set_default_bundle(modality, model["bundle"])
    feedback.progress(1.0)
    feedback.info(f"the default {modality} model is {target}")
    return target
