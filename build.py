#!/usr/bin/env python3
"""One entry point for people and CI: set-up, tests, lint, the demo, and commands run in the project's environment.

Only the standard library is used here, so any python3 can start it; the work itself runs in a venv made from
Debian's /usr/bin/python3 (the interpreter QGIS embeds), kept outside the checkout and keyed by the requirements.
"""

import argparse
import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
# `test --qgis 3.40`: Debian 13's QGIS 3.40 (Python 3.13, numpy 2) in a debootstrapped root, cached like the venv.
TRIXIE_MIRROR = "http://deb.debian.org/debian"
ROOT_VENV = "/opt/segearth-venv"  # inside that root
ROOT_PIP_CERT = "/etc/ssl/certs/host-ca-certificates.crt"  # pip in the root trusts what the host's pip trusts
NOT_IN_ROOT_VENV = {"numpy", "ruff"}  # numpy stays Debian's 2.x; lint runs on the host
PASSED_TO_ROOT = {"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "CI", "TERM",
                  "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "SEGEARTH_SHARED"}
ROOT_STACK_CHECK = """
import sys, numpy, qgis.core, osgeo.gdal_array, torch, open_clip, onnxruntime
assert numpy.__version__ == sys.argv[1], f"numpy {numpy.__version__} shadows Debian's {sys.argv[1]}"
print(f"QGIS 3.40 environment ok: QGIS {qgis.core.Qgis.QGIS_VERSION}, Python {sys.version.split()[0]}, "
      f"numpy {numpy.__version__}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
"""
QGIS340_TESTS = ["tests/test_algorithms.py", "tests/test_plugin.py", "tests/test_pipeline.py",
                 "tests/test_vectorize.py", "tests/test_bundle.py", "tests/test_cross_version.py",
                 "tests/test_sar_pipeline.py", "tests/test_evaluate.py", "tests/test_dependencies.py"]
ROOT_PYTHON = "3.13"  # Debian 13's
WHEEL_PLATFORMS = ["manylinux2014", "manylinux_2_17", "manylinux_2_27", "manylinux_2_28", "manylinux_2_34"]


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


def offline_wheels(venv, python_version=None):
    """The onnx profile's CPU wheels and a pip wheel, saved by `pip download` as a user makes a folder for an offline
    install (README: In QGIS); the installer tests install from it. For this Python, or for CPython
    ``python_version`` on x86-64 Linux (the QGIS 3.40 root's). Cached by the pins."""
    pins = json.loads((ROOT / "resources" / "dependencies.json").read_text())
    pip_version = pins["pip"]["wheel"].split("-")[1]
    requirements = [pins["onnxruntime"]["cpu"], *pins["profiles"]["onnx"], f"pip=={pip_version}"]
    target = []
    if python_version:
        target = ["--python-version", python_version, "--implementation", "cp",
                  *(f"--platform={tag}_x86_64" for tag in WHEEL_PLATFORMS)]
    key = hashlib.sha256(json.dumps([requirements, target]).encode()).hexdigest()[:16]
    folder = cache_dir() / f"wheels-{key}"
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    say(f"wheels: downloading {' '.join(requirements)} (Python {python_version or 'of the venv'}) for the "
        "offline-install tests")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--only-binary=:all:", *target, "--dest", str(partial), *requirements], check=True)
    (partial / ".complete").write_text(json.dumps([requirements, target]) + "\n")
    os.replace(partial, folder)
    return folder


def test(venv, pytest_args, qgis="3.22"):
    code = lint(venv)
    if code:
        say("lint failed: fix the findings above (python3 build.py lint)")
        return code
    if qgis == "3.40":
        return test_qgis340(venv, pytest_args)
    wheels = offline_wheels(venv)
    with tempfile.TemporaryDirectory(prefix="segearth-qgis-profile-") as profile:
        command = [str(venv / "bin" / "python"), "-m", "pytest", "--qgis_disable_gui", "-ra", *pytest_args]
        code = run_in_env(venv, command, {"QGIS_CUSTOM_CONFIG_PATH": profile, "SEGEARTH_TEST_WHEELS": str(wheels)})
    if code == 5:
        say("pytest collected no tests: that counts as a failure")
    return code


def qgis340_recipe():
    """What the QGIS 3.40 root is made of; its hash names the cached root, so any change builds a new one."""
    return json.dumps({"debootstrap": ["--variant=minbase", "trixie", TRIXIE_MIRROR], "apt": APT_PACKAGES,
                       "venv": ROOT_VENV, "requirements": root_requirements(),
                       "constraints": (ROOT / "requirements" / "constraints.txt").read_text()}, sort_keys=True)


def root_requirements():
    """runtime.txt and dev.txt without the packages in NOT_IN_ROOT_VENV; constraints.txt pins the rest."""
    lines = []
    for name in ("runtime.txt", "dev.txt"):
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-") and re.split(r"[=<>!~\[ ]", line)[0].lower() not in NOT_IN_ROOT_VENV:
                lines.append(line)
    return lines


def qgis340_home():
    return cache_dir().resolve() / f"qgis340-{hashlib.sha256(qgis340_recipe().encode()).hexdigest()[:16]}"


def mount_points(under):
    """Mount points at or below ``under`` in /proc/mounts, deepest and latest first (the order to unmount them)."""
    under = str(under)
    with open("/proc/mounts") as mounts:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1]) for line in mounts]
    inside = [p for p in reversed(points) if p == under or p.startswith(under + "/")]
    return sorted(inside, key=lambda p: p.count("/"), reverse=True)


def unmount_all(under):
    """Kill what still runs chrooted at or below ``under`` (left by a killed run), then unmount everything there,
    lazily where something still holds it; an error if any mount stays."""
    for process in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # not a process, or gone meanwhile
            if process.name.isdigit() and Path(os.readlink(process / "root")).is_relative_to(under):
                os.kill(int(process.name), signal.SIGKILL)
    for point in mount_points(under):
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = mount_points(under)
    if left:
        raise SetupError(f"could not unmount {', '.join(left)}: unmount them by hand (umount --lazy PATH)")


def remove_tree(path):
    """rmtree, but never through a mount (a bound checkout would be deleted with it)."""
    unmount_all(path)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def mounted(root, mounts):
    """Mount ``(kind, source, path inside the root)`` entries (kind: proc, tmpfs, bind, bind-ro) for the ``with`` body.

    A stale mount of a killed run is removed first. The root is bound onto itself as a private mount, so nothing
    propagates to the host's mount tree. On the way out, whatever happened, everything is unmounted with the
    interrupting signals held back until it is done, and /proc/mounts is checked.
    """
    unmount_all(root)
    try:
        mount("bind", root, root)
        for kind, source, inside in sorted(mounts, key=lambda m: str(m[2]).count("/")):
            target = Path(f"{root}{inside}")
            target.mkdir(parents=True, exist_ok=True)
            if not target.resolve().is_relative_to(root):
                raise SetupError(f"{inside} leads out of the root {root} through a symbolic link")
            mount(kind, source, target)
        yield
    finally:
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            unmount_all(root)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def mount(kind, source, target):
    if kind in ("proc", "tmpfs"):
        subprocess.run(["mount", "-t", kind, kind, str(target)], check=True)
    else:
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    subprocess.run(["mount", "--make-private", str(target)], check=True)
    if kind == "bind-ro":
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)


@contextlib.contextmanager
def interrupts_raise():
    """SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does, so that ``finally`` blocks run on a cancel."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def root_env(**extra):
    env = {"PATH": f"{ROOT_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    env.update({k: v for k, v in os.environ.items() if k in PASSED_TO_ROOT})
    env.update(extra)
    return env


def run_in_root(root, argv, env=None, cwd="/", output=None):
    """``argv`` chrooted into ``root``, in a session of its own whose leftovers are killed when it returns or we are
    interrupted, so that no process keeps a mount busy."""
    def enter():
        os.chroot(root)
        os.chdir(cwd)

    process = subprocess.Popen([str(a) for a in argv], env=env or root_env(), preexec_fn=enter,
                               start_new_session=True, stdout=output, stderr=output and subprocess.STDOUT)
    try:
        return process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def build_qgis340_root(home):
    """debootstrap trixie, Debian's QGIS 3.40 in it, then a venv from its python3 (system site-packages, Debian's
    numpy) with the project's pins. The stamp comes last, so a half-built root is started again."""
    root = home / "root"
    if (home / ".segearth-stamp").exists():
        return root
    for old in cache_dir().resolve().glob("qgis340-*"):
        if old.is_dir():
            say(f"QGIS 3.40: removing {old}")
            remove_tree(old)
    install_apt_packages(["debootstrap"])
    home.mkdir(parents=True)
    log_path = home / "build.log"
    say(f"QGIS 3.40: building a Debian 13 root in {root} (the first time only; log: {log_path})")
    started = time.monotonic()
    with open(log_path, "w") as log:
        def step(what, argv, chrooted=True):
            say(f"QGIS 3.40: {what}")
            log.write(f"$ {' '.join(map(str, argv))}\n")
            log.flush()
            if chrooted:
                code = run_in_root(root, argv, output=log)
            else:
                try:
                    code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
                finally:
                    unmount_all(root)  # debootstrap's own /proc and /sys, should it be interrupted
            if code:
                log.flush()
                tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
                raise SetupError(f"{what} failed (exit {code}); the end of {log_path}:\n{tail}")

        step("debootstrap --variant=minbase trixie",
             ["debootstrap", "--variant=minbase", "trixie", root, TRIXIE_MIRROR], chrooted=False)
        (root / "opt" / "segearth-requirements.txt").write_text("\n".join(root_requirements()) + "\n")
        shutil.copy2(ROOT / "requirements" / "constraints.txt", root / "opt" / "segearth-constraints.txt")
        with mounted(root, [("proc", None, "/proc"), ("bind", "/dev", "/dev")]):
            step("apt-get update", ["/usr/bin/apt-get", "update", "-qq"])
            step("apt: QGIS 3.40 and GDAL (--no-install-recommends)",
                 ["/usr/bin/apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES])
            step("apt-get clean", ["/usr/bin/apt-get", "clean"])
            shutil.copy2(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt", f"{root}{ROOT_PIP_CERT}")
            numpy = next((root / "usr/lib/python3/dist-packages").glob("numpy-*.dist-info")).name[6:-10]
            (root / "opt" / "segearth-numpy.txt").write_text(f"numpy=={numpy}\n")
            step(f"venv: {ROOT_VENV} from the root's python3 (system site-packages, Debian's numpy {numpy})",
                 ["/usr/bin/python3", "-m", "venv", "--system-site-packages", ROOT_VENV])
            step("venv: installing the pinned requirements",
                 [f"{ROOT_VENV}/bin/python", "-m", "pip", "install", "-q", "--no-cache-dir",
                  "--disable-pip-version-check", "--cert", ROOT_PIP_CERT, "-r", "/opt/segearth-requirements.txt",
                  "-c", "/opt/segearth-constraints.txt", "-c", "/opt/segearth-numpy.txt"])
            if run_in_root(root, [f"{ROOT_VENV}/bin/python", "-c", ROOT_STACK_CHECK, numpy],
                           root_env(QT_QPA_PLATFORM="offscreen")):
                raise SetupError(f"the QGIS 3.40 environment in {root} fails its import check (above)")
    (home / ".segearth-stamp").write_text(qgis340_recipe())
    say(f"QGIS 3.40: root ready in {time.monotonic() - started:.0f} s")
    return root


def test_qgis340(venv, pytest_args):
    """The QGIS tests under Debian 13's QGIS 3.40 in the cached root, after the host's QGIS 3.22 environment wrote a
    bundle and a segment output for test_cross_version.py to compare with."""
    if os.geteuid() != 0:
        raise SetupError("test --qgis 3.40 builds a Debian 13 root, chroots into it and mounts into it, which needs "
                         "root: sudo python3 build.py test --qgis 3.40")
    shared = Path(os.environ.get("SEGEARTH_SHARED", ROOT.parent / "shared")).resolve()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".qgis340.lock", "w") as lock, interrupts_raise():
        fcntl.flock(lock, fcntl.LOCK_EX)
        for old in cache_dir().resolve().glob("qgis340-*"):
            unmount_all(old)  # left by a killed run
        home = qgis340_home()
        root = build_qgis340_root(home)
        run = home / "run"  # this run's /tmp in the root; a killed run's is removed here
        remove_tree(run)
        run.mkdir(mode=0o700)
        say("QGIS 3.22: exporting the tiny bundle and segmenting the cross-version scene")
        code = run_in_env(venv, [str(venv / "bin" / "python"), str(ROOT / "tests" / "cross_version.py"),
                                 str(run / "cross-version")], {"QGIS_CUSTOM_CONFIG_PATH": str(run / "qgis322-profile")})
        if code:
            say("writing the cross-version reference under QGIS 3.22 failed (above)")
            return code
        mounts = [("proc", None, "/proc"), ("bind", "/dev", "/dev"), ("tmpfs", None, "/dev/shm"),
                  ("bind", run, "/tmp"), ("bind", ROOT, ROOT),
                  ("bind-ro", offline_wheels(venv, ROOT_PYTHON), "/tmp/wheels")]
        if shared.is_dir():
            mounts.append(("bind-ro", shared, shared))
        env = root_env(VIRTUAL_ENV=ROOT_VENV, PYTHONPATH=str(ROOT), PYTHONNOUSERSITE="1", QT_QPA_PLATFORM="offscreen",
                       HF_HUB_OFFLINE="1", XDG_RUNTIME_DIR="/tmp", QGIS_CUSTOM_CONFIG_PATH="/tmp/qgis340-profile",
                       SEGEARTH_CROSS_VERSION="/tmp/cross-version", SEGEARTH_TEST_WHEELS="/tmp/wheels")
        names_tests = any((ROOT / a.split("::")[0]).exists() for a in pytest_args if not a.startswith("-"))
        command = [f"{ROOT_VENV}/bin/python", "-m", "pytest", "--qgis_disable_gui", "-ra",
                   *([] if names_tests else QGIS340_TESTS), *pytest_args]
        say(f"QGIS 3.40: {' '.join(command)}")
        with mounted(root, mounts):
            code = run_in_root(root, command, env, cwd=ROOT)
        remove_tree(run)
        say(f"QGIS 3.40: pytest exited with {code}; nothing is left mounted under {root}")
    if code == 5:
        say("pytest collected no tests: that counts as a failure")
    return code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] in CLI_COMMANDS and argv[1] != "--":
        argv.insert(1, "--")  # the CLI's own options (--images, --optical, ...) pass through as they are
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install the apt packages and the venv, then check the stack")
    test_parser = sub.add_parser("test", help="set up, lint, then run the whole test suite headless")
    test_parser.add_argument("--qgis", choices=["3.22", "3.40"], default="3.22",
                             help="3.22: Debian 12's QGIS on this machine; 3.40: the QGIS tests in a Debian 13 root")
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
        try:
            return test(venv, strip_separator(args.pytest_args), args.qgis)
        except SetupError as error:
            say(f"test --qgis {args.qgis} failed: {error}")
            return 2
        except subprocess.CalledProcessError as error:
            say(f"test --qgis {args.qgis} failed: {' '.join(map(str, error.cmd))} exited with {error.returncode}")
            return 2
        except KeyboardInterrupt as interrupt:
            say(f"test --qgis {args.qgis} cancelled ({interrupt or 'SIGINT'})")
            return 130
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
