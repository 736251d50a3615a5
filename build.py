#!/usr/bin/env python3
"""One entry point for people and CI: set-up, tests, lint, the demo, and commands run in the project's environment.

Only the standard library is used here, so any python3 can start it; the work itself runs in a venv made from
Debian's /usr/bin/python3 (the interpreter QGIS embeds), kept outside the checkout and keyed by the requirements.
"""

import argparse
import configparser
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
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


CLI_COMMANDS = {
    "segment": "segment a raster into a classified GeoTIFF without QGIS (see segment --help)",
    "evaluate": "mIoU / IoU of the model on a labelled folder, as the papers measure it (see evaluate --help)",
    "export": "export checkpoints to a validated ONNX model bundle",
    "bench": "benchmarks that print figures (bench speed, bench memory, bench parity)",
    "models": "the model store: models download [optical|sar|all], models list, models install BUNDLE",
    "train-sar": "distil a SAR model from an optical teacher on a co-registered optical/SAR pair",
}
PACKAGE_LIMIT_BYTES = 25 * 1024 * 1024
PACKAGE_FORBIDDEN = {".so", ".pyd", ".dll", ".dylib", ".exe", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".npz", ".npy",
                     ".safetensors", ".pyc", ".zip", ".whl"}
METADATA_REQUIRED = ["name", "qgisMinimumVersion", "description", "about", "version", "author"]
METADATA_FOR_UPLOAD = ["email", "repository", "tracker"]
DEMO_OUT = ROOT / "out" / "demo"


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


def missing_apt_packages():
    missing = []
    for package in APT_PACKAGES:
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


def install_apt_packages():
    if not shutil.which("dpkg-query"):
        raise SetupError("this set-up needs Debian 12 (bookworm) or a derivative with apt")
    missing = missing_apt_packages()
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


def demo(venv):
    """The main job: segearth:segment through qgis_process.bin on a generated GeoTIFF, then a PNG preview."""
    python = str(venv / "bin" / "python")
    prepared = subprocess.run([python, "-m", "segearth_qgis.cli", "demo-prepare", "--out", str(DEMO_OUT)],
                              env=project_env(venv), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if prepared.returncode:
        return prepared.returncode
    job = json.loads(prepared.stdout.strip().splitlines()[-1])
    for stale in DEMO_OUT.glob("classes.*"):
        stale.unlink()
    try:
        env = qgis_env(venv, ROOT / "out" / "qgis")
    except SetupError as error:
        say(str(error))
        return 1
    parameters = {"INPUT": job["input"], "CLASSES": job["classes"], "MODEL": job["model"], "DEVICE": "auto",
                  "OUTPUT": DEMO_OUT / "classes.tif", "OUTPUT_VECTOR": DEMO_OUT / "classes.gpkg",
                  "OUTPUT_AREAS": DEMO_OUT / "areas.csv"}
    say("qgis_process.bin run segearth:segment " + " ".join(f"--{k}={v!r}" for k, v in parameters.items()))
    code = subprocess.run(["qgis_process.bin", "run", "segearth:segment", "--",
                           *(f"{k}={v}" for k, v in parameters.items())], env=env, cwd=ROOT).returncode
    if code:
        say(f"qgis_process.bin exited with {code}")
        return code
    preview = [python, "-m", "segearth_qgis.cli", "demo-preview", "--out", str(DEMO_OUT)]
    return subprocess.run(preview + (["--random-weights"] if job["random_weights"] else []),
                          env=project_env(venv), cwd=ROOT).returncode


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


def run_in_env(venv, command, extra_env=None):
    env = project_env(venv)
    env.update(extra_env or {})
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def lint(venv):
    return run_in_env(venv, [str(venv / "bin" / "ruff"), "check", str(ROOT)])


def test(venv, pytest_args):
    code = lint(venv)
    if code:
        say("lint failed: fix the findings above (python3 build.py lint)")
        return code
    with tempfile.TemporaryDirectory(prefix="segearth-qgis-profile-") as profile:
        command = [str(venv / "bin" / "python"), "-m", "pytest", "--qgis_disable_gui", "-ra", *pytest_args]
        code = run_in_env(venv, command, {"QGIS_CUSTOM_CONFIG_PATH": profile})
    if code == 5:
        say("pytest collected no tests: that counts as a failure")
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install the apt packages and the venv, then check the stack")
    test_parser = sub.add_parser("test", help="set up, lint, then run the whole test suite headless")
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments after --")
    sub.add_parser("lint", help="ruff over the whole tree")
    sub.add_parser("demo", help="the main job: segearth:segment via qgis_process on a generated GeoTIFF, a preview")
    qgis_parser = sub.add_parser("qgis", help="qgis_process.bin with this checkout's plugin in an isolated profile")
    qgis_parser.add_argument("qgis_args", nargs=argparse.REMAINDER, help="after --, e.g. -- run segearth:segment ...")
    package_parser = sub.add_parser("package", help="build the plugin zip (out/segearth_qgis-VERSION.zip)")
    package_parser.add_argument("--out", default=str(ROOT / "out"), help="folder for the zip")
    for name, text in CLI_COMMANDS.items():
        cli_parser = sub.add_parser(name, help=text, add_help=False)
        cli_parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="see: python3 build.py NAME --help")
    stage_parser = sub.add_parser("stage", help="stage the installable plugin folder")
    stage_parser.add_argument("--out", default=str(ROOT / "out" / "plugin"), help="folder to hold segearth_qgis/")
    run_parser = sub.add_parser("run", help="run any command inside the project's environment")
    run_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)

    try:
        venv = setup()
    except SetupError as error:
        say(f"set-up failed: {error}")
        return 2
    except subprocess.CalledProcessError as error:
        say(f"set-up failed: {' '.join(map(str, error.cmd))} exited with {error.returncode}")
        return 2

    if args.command == "setup":
        return 0
    if args.command == "lint":
        return lint(venv)
    if args.command == "demo":
        return demo(venv)
    if args.command == "qgis":
        return run_qgis(venv, strip_separator(args.qgis_args))
    if args.command == "package":
        try:
            package(args.out)
        except SetupError as error:
            say(f"package failed: {error}")
            return 1
        return 0
    if args.command == "test":
        return test(venv, strip_separator(args.pytest_args))
    if args.command in CLI_COMMANDS:
        return run_in_env(venv, [str(venv / "bin" / "python"), "-m", "segearth_qgis.cli", args.command,
                                 *strip_separator(args.cli_args)])
    if args.command == "stage":
        say(f"staged {stage_plugin(args.out)}")
        return 0
    if args.command == "run":
        cmd = strip_separator(args.cmd)
        if not cmd:
            parser.error("run needs a command: python3 build.py run -- CMD ARGS...")
        return run_in_env(venv, cmd)
    return 2


def strip_separator(args):
    return args[1:] if args and args[0] == "--" else args


if __name__ == "__main__":
    sys.exit(main())
