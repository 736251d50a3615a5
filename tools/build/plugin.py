"""The installable plugin: the staged folder (metadata, resources and licence inside), the zip for plugins.qgis.org,
and qgis_process with the staged plugin in an isolated profile."""

import configparser
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .environment import ROOT, SetupError, cache_dir, project_env, say

PACKAGE_LIMIT_BYTES = 25 * 1024 * 1024


PACKAGE_FORBIDDEN = {".so", ".pyd", ".dll", ".dylib", ".exe", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".npz", ".npy",
                     ".safetensors", ".pyc", ".zip", ".whl"}


# What plugins.qgis.org refuses an upload without.
METADATA_REQUIRED = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                     "tracker"]


TEXT_PROBE_BYTES = 8192


@contextlib.contextmanager
def staging_lock():
    """One staging at a time across build.py commands: a second waits for the first (and says so once)."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stage.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another build.py command to finish staging ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def stage_plugin(destination, metadata=ROOT / "metadata.txt"):
    """The installable plugin folder: ``segearth_qgis/`` with ``metadata.txt``, ``resources/``, ``LICENSE`` and
    ``NOTICE`` placed inside it (``package`` refuses a folder without a licence)."""
    target = Path(destination) / "segearth_qgis"
    with staging_lock():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "segearth_qgis", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(metadata, target / "metadata.txt")
        shutil.copytree(ROOT / "resources", target / "resources")
        for name in ("LICENSE", "NOTICE"):
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, target / name)
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


def read_metadata(path=ROOT / "metadata.txt"):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    if not parser.has_section("general"):
        raise SetupError(f"{path} has no [general] section")
    return parser["general"]


def binaries(staged, icon):
    """Files plugins.qgis.org would take for binaries: by extension, or a NUL byte in the first 8 kB; the icon the
    metadata names may be an image."""
    found = []
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        if path.suffix.lower() in PACKAGE_FORBIDDEN:
            found.append(path)
        elif path != icon:
            with open(path, "rb") as file:
                if b"\0" in file.read(TEXT_PROBE_BYTES):
                    found.append(path)
    return [path.relative_to(staged.parent).as_posix() for path in found]


def bandit(venv, staged):
    """Bandit over the staged Python: (medium/high findings as 'file:line test: text', low count, findings skipped
    by a ``# nosec`` comment)."""
    executable = Path(venv) / "bin" / "bandit"
    if not executable.is_file():
        raise SetupError(f"{executable} is missing: python3 build.py setup installs it (requirements/dev.txt)")
    run = subprocess.run([str(executable), "-r", "-q", "-f", "json", staged.name], cwd=staged.parent,
                         env=project_env(venv), capture_output=True, text=True)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise SetupError(f"bandit exited with {run.returncode} without a report:\n{run.stderr[-2000:]}") from None
    if report["errors"]:
        raise SetupError("bandit could not read " + "; ".join(f"{e['filename']}: {e['reason']}"
                                                               for e in report["errors"]))
    serious = [f"{r['filename']}:{r['line_number']} {r['test_id']}: {r['issue_text']}"
               for r in report["results"] if r["issue_severity"] in ("MEDIUM", "HIGH")]
    low = sum(r["issue_severity"] == "LOW" for r in report["results"])
    totals = report["metrics"]["_totals"]
    return serious, low, totals["nosec"] + totals["skipped_tests"]  # bare '# nosec', and '# nosec BXXX


def package(out_dir, venv, metadata=ROOT / "metadata.txt"):
    """The plugin zip for plugins.qgis.org, refused (SetupError) unless the upload checks pass: the required
    metadata, a licence, no binaries, no medium or high Bandit finding, at most 25 MB."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="segearth-package-") as work:
        staged = stage_plugin(work, metadata)
        fields = read_metadata(staged / "metadata.txt")
        missing = [key for key in METADATA_REQUIRED if not fields.get(key, "").strip()]
        if missing:
            raise SetupError(f"metadata.txt lacks {', '.join(missing)}: plugins.qgis.org requires them")
        if not (staged / "LICENSE").is_file():
            raise SetupError(f"no LICENSE in the staged plugin: plugins.qgis.org requires one ({ROOT / 'LICENSE'})")
        found = binaries(staged, staged / fields.get("icon", "").strip())
        if found:
            raise SetupError(f"binaries do not belong in the plugin zip: {', '.join(found)}")
        serious, low, nosec = bandit(venv, staged)
        if serious:
            raise SetupError(f"bandit: {len(serious)} medium/high finding(s); fix each, or mark it "
                             "'# nosec BXXX: reason' where it is safe:\n  " + "\n  ".join(serious))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"segearth_qgis-{fields['version']}.zip"
        temp = target.with_suffix(".zip.partial")
        with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staged.rglob("*")):
                archive.write(path, path.relative_to(staged.parent).as_posix())
        size = temp.stat().st_size
        if size > PACKAGE_LIMIT_BYTES:
            temp.unlink()
            raise SetupError(f"the plugin zip would be {size / 2**20:.1f} MB, over the 25 MB limit")
        os.replace(temp, target)
    say(f"package: {target} ({size / 1024:.0f} kB, version {fields['version']}); metadata, licence, no binaries; "
        f"bandit: 0 medium/high, {low} low, {nosec} skipped by # nosec")
    return target
