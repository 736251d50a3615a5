"""The installable plugin: the staged folder (metadata, resources and licence inside), the zip for plugins.qgis.org,
and qgis_process with the staged plugin in an isolated profile."""

import configparser
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .environment import ROOT, SetupError, project_env, say

PACKAGE_LIMIT_BYTES = 25 * 1024 * 1024


PACKAGE_FORBIDDEN = {".so", ".pyd", ".dll", ".dylib", ".exe", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".npz", ".npy",
                     ".safetensors", ".pyc", ".zip", ".whl"}


METADATA_REQUIRED = ["name", "qgisMinimumVersion", "description", "about", "version", "author"]


METADATA_FOR_UPLOAD = ["email", "repository", "tracker"]


def stage_plugin(destination):
    """The installable plugin folder: ``segearth_qgis/`` with ``metadata.txt`` and ``resources/`` placed inside it."""
    target = Path(destination) / "segearth_qgis"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(ROOT / "segearth_qgis", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "metadata.txt", target / "metadata.txt")
    shutil.copytree(ROOT / "resources", target / "resources")
    return target


def qgis_env(venv, work):
    """qgis_process.bin with the plugin staged from this checkout, in an isolated profile under ``work``."""
    stage_plugin(work / "plugins")
    env = project_env(venv)
    env.update(QGIS_PLUGINPATH=str(work / "plugins"), QGIS_CUSTOM_CONFIG_PATH=str(work / "profile"))
    enable = subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    if enable.returncode and "already enabled" not in enable.stdout + enable.stderr:
        raise SetupError(f"qgis_process.bin could not enable the staged plugin:\n{enable.stdout}{enable.stderr}")
    return env


def run_qgis(venv, args):
    try:
        env = qgis_env(venv, ROOT / "out" / "qgis")
    except SetupError as error:
        say(str(error))
        return 1
    return subprocess.run(["qgis_process.bin", *args], env=env, cwd=ROOT).returncode


def read_metadata():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]


def package(out_dir):
    """The plugin zip for the plugin manager: staged folder, metadata checked, no binaries, at most 25 MB."""
    metadata = read_metadata()
    missing = [key for key in METADATA_REQUIRED if not metadata.get(key, "").strip()]
    if missing:
        raise SetupError(f"metadata.txt lacks {', '.join(missing)}")
    for key in METADATA_FOR_UPLOAD:
        if not metadata.get(key, "").strip():
            say(f"note: metadata.txt has no {key}; plugins.qgis.org needs one before an upload")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="segearth-package-") as work:
        staged = stage_plugin(work)
        forbidden = [p for p in staged.rglob("*") if p.suffix.lower() in PACKAGE_FORBIDDEN]
        if forbidden:
            raise SetupError(f"binaries do not belong in the plugin zip: {', '.join(map(str, forbidden))}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"segearth_qgis-{metadata['version']}.zip"
        temp = target.with_suffix(".zip.partial")
        with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staged.rglob("*")):
                archive.write(path, path.relative_to(staged.parent).as_posix())
        size = temp.stat().st_size
        if size > PACKAGE_LIMIT_BYTES:
            temp.unlink()
            raise SetupError(f"the plugin zip would be {size / 2**20:.1f} MB, over the 25 MB limit")
        os.replace(temp, target)
    say(f"package: {target} ({size / 1024:.0f} kB, version {metadata['version']})")
    return target
