"""`test --qgis 3.40`: Debian 13's QGIS 3.40 (Python 3.13, numpy 2) in a debootstrapped root, cached like the venv,
with the checkout and ../shared mounted in and everything unmounted however the run ends."""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .environment import APT_PACKAGES, ROOT, SetupError, cache_dir, install_apt_packages, run_in_env, say
from .wheels import offline_wheels

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


QGIS340_TESTS = ["tests/qgis", "tests/desktop", "tests/tools/test_plugin_package.py", "tests/core/test_pipeline.py",
                 "tests/core/test_sar_pipeline.py", "tests/core/gis/test_vectorize.py",
                 "tests/core/runtime/test_bundle.py", "tests/core/eval/test_evaluate.py",
                 "tests/core/setup/test_dependencies.py", "tests/core/test_hostile_inputs.py",
                 "tests/core/common/test_outputs.py", "tests/core/gis/test_class_raster.py",
                 "tests/core/runtime/test_bundle_checks.py", "tests/test_cli.py"]
ROOT_PYTHON = "3.13"  # Debian 13's


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
