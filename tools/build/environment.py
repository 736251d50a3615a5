"""The project's environment: Debian's QGIS and GDAL from apt, a venv with the pinned ML stack, the variables every
command runs with. Standard library only, so any python3 can run it."""

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


APT_PACKAGES = ["qgis", "python3-qgis", "qgis-providers", "python3-gdal", "gdal-bin", "python3-venv", "xvfb", "xauth"]


REQUIREMENT_FILES = ["runtime.txt", "dev.txt", "constraints.txt"]


STACK_CHECK = """
import numpy, qgis.core, osgeo.gdal_array, torch, open_clip, onnxruntime, skimage
assert numpy.__version__ == "1.24.2", f"numpy {numpy.__version__} shadows Debian's 1.24.2: gdal_array would break"
print(f"environment ok: QGIS {qgis.core.Qgis.QGIS_VERSION}, numpy {numpy.__version__}, torch {torch.__version__}, "
      f"open_clip {open_clip.__version__}, onnxruntime {onnxruntime.__version__} "
      f"({','.join(onnxruntime.get_available_providers())}), scikit-image {skimage.__version__}")
"""


class SetupError(RuntimeError):
    """A set-up step failed in a way the user can fix; the message says how."""


def say(message):
    print(f"[build] {message}", flush=True)


def requirements_hash():
    digest = hashlib.sha256()
    for name in REQUIREMENT_FILES:
        digest.update(name.encode())
        digest.update((ROOT / "requirements" / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "segearth-qgis"


def venv_dir():
    override = os.environ.get("SEGEARTH_VENV")
    return Path(override) if override else cache_dir() / f"venv-{requirements_hash()}"


def missing_apt_packages(packages=APT_PACKAGES):
    missing = []
    for package in packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if status.returncode != 0 or "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def privileged_prefix():
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo"]
    raise SetupError("installing Debian packages needs root: run this as root, or install sudo, or install them "
                     f"yourself: apt-get install --no-install-recommends {' '.join(APT_PACKAGES)}")


def install_apt_packages(packages=APT_PACKAGES):
    if not shutil.which("dpkg-query"):
        raise SetupError("this set-up needs Debian 12 (bookworm) or a derivative with apt")
    missing = missing_apt_packages(packages)
    if not missing:
        return
    prefix = privileged_prefix()
    say(f"apt: installing {' '.join(missing)} (and their dependencies)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(prefix + ["apt-get", "update", "-qq"], check=True, env=env)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    subprocess.run(prefix + install, check=True, env=env)


def build_venv(venv):
    """Create the venv and install the pinned requirements; the stamp comes last, so a half-built venv is redone."""
    stamp = venv / ".segearth-stamp"
    want = requirements_hash()
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin" / "python").exists():
        return
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    say(f"venv: creating {venv} from {SYSTEM_PYTHON} (system site-packages, for QGIS, GDAL and numpy)")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    say("venv: installing the pinned requirements (the first time this takes a few minutes)")
    requirements = ROOT / "requirements"
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(requirements / "dev.txt"), "-c", str(requirements / "constraints.txt")], check=True)
    stamp.write_text(want + "\n")
    prune_old_venvs(venv)


def prune_old_venvs(keep):
    if os.environ.get("SEGEARTH_VENV"):
        return
    for old in keep.parent.glob("venv-*"):
        if old != keep and old.is_dir():
            say(f"venv: removing the outdated {old}")
            shutil.rmtree(old, ignore_errors=True)


def setup():
    """Idempotent: apt packages, the venv, then one interpreter that imports the whole stack."""
    if not os.path.exists(SYSTEM_PYTHON):
        raise SetupError(f"{SYSTEM_PYTHON} is missing: this set-up targets Debian 12, whose python3 QGIS embeds")
    install_apt_packages()
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_venv(venv)
    subprocess.run([str(venv / "bin" / "python"), "-c", STACK_CHECK], check=True, env=project_env(venv))
    return venv


def project_env(venv):
    """The variables every command of the project runs with: the venv first on PATH, headless Qt, no model hub."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONNOUSERSITE"] = "1"
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["HF_HUB_OFFLINE"] = "1"
    runtime = Path(tempfile.gettempdir()) / f"segearth-xdg-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.setdefault("XDG_RUNTIME_DIR", str(runtime))
    return env


def run_in_env(venv, command, extra_env=None):
    env = project_env(venv)
    env.update(extra_env or {})
    return subprocess.run(command, cwd=ROOT, env=env).returncode
