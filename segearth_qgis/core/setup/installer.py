"""Installs the plugin's packages with the interpreter QGIS really runs, through pip, into a runtime folder outside the
plugin (``dependencies.py``), never upgrading or shadowing what QGIS itself has loaded (numpy, GDAL, ...).

An install resolves against QGIS's own environment (``pip install --dry-run --report``, constrained to the versions
QGIS has), installs exactly the missing wheels into a new folder (``--target``, ``--no-deps``), imports them in a
separate process, and only then makes that folder the active one. A failure or a cancel deletes the new folder and
leaves the previous runtime in use.
"""

import contextlib
import importlib.metadata
import json
import os
import platform
import queue
import re
import shutil
import subprocess  # nosec B404: pip and the interpreter probes run as argument lists, never through a shell
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..common.choices import PROFILES
from ..common.download import DownloadError, fetch
from ..common.failures import ActionableError
from ..common.feedback import Cancelled, Feedback, as_feedback
from ..common.resources import resource_path
from .dependencies import PROFILE_MODULES, active_site, add_site, read_state, remove_site, write_state

PINS = json.loads(resource_path("dependencies.json").read_text(encoding="utf-8"))
# onnxruntime-gpu 1.31 links CUDA 13; its extras bring the CUDA runtime and cuDNN as wheels: only the driver is needed.
ORT_CPU, ORT_GPU = PINS["onnxruntime"]["cpu"], PINS["onnxruntime"]["cuda"]
# onnxruntime 1.31 has macOS wheels for Apple silicon on macOS 14+ only; this is the last release with Intel-Mac and
# macOS 13 wheels (the tiny test bundle segments the same with it: logits within 2e-7).
ORT_OLD_MACOS = PINS["onnxruntime"]["macos_before_14"]
ORT_VERSION = ORT_CPU.split("==")[1]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # Linux without a usable GPU: torch without 3 GB of CUDA
CUDA_DRIVER_MIN = (13, 0)           # the CUDA version the driver must support (Linux driver >= 580.65, Windows >= 580)
CUDA_DRIVER_BRANCH_MIN = 580        # the same, read from a driver version when only nvidia-smi answers
COMPUTE_CAPABILITY_MIN = (7, 5)     # CUDA 13 dropped Maxwell, Pascal and Volta
PIP_MIN = (22, 2)                   # --dry-run --report
STALE_PARTIAL_SECONDS = 6 * 3600    # an unfinished install older than this was interrupted: its folder goes
INCOMPLETE = ".incomplete"          # in an environment folder while its install runs
PIP_WHEEL, PIP_WHEEL_SHA256, PIP_WHEEL_URLS = PINS["pip"]["wheel"], PINS["pip"]["sha256"], PINS["pip"]["urls"]
PIP_WHEEL_URL_ENV = "SEGEARTH_PIP_WHEEL_URL"  # another place to download it from (tests, mirrors)
# Distributions QGIS and its plugins are built against: pinned to the installed version whenever present.
QGIS_STACK = ("numpy", "GDAL", "scipy", "pandas", "matplotlib", "shapely", "pyproj", "h5py", "netCDF4", "rasterio",
              "fiona", "Pillow", "PyQt5", "PyQt6", "PyQt5-sip", "PyQt6-sip", "sip")
VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc|\.post|\.dev)\d+)*(\+[A-Za-z0-9.]+)?$")
PIP_PHASES = (("Processing ", 0.05), ("Collecting ", 0.05), ("Downloading ", 0.10), ("Installing collected", 0.6),
              ("Successfully installed", 0.95))
# pip's words -> what the user should do (the first match is reported)
DIAGNOSES = (
    (re.compile(r"No matching distribution found for (\S+)|Could not find a version that satisfies the requirement "
                r"(\S+)", re.I),
     "pip found no wheel of {0} for this Python ({python}, {platform}). Offline: the wheel folder lacks it (make it "
     "again with the README's pip download command for this Python and platform). Online: no wheel is published for "
     "this Python and platform (onnxruntime 1.31 needs Python 3.11 or newer), or the index cannot be reached."),
    (re.compile(r"BadZipFile|not a zip file|invalid wheel|has an invalid wheel|is not a valid wheel|"
                r"Wheel '.*' located at .* is invalid|zipfile", re.I),
     "a wheel is damaged or not a wheel at all: download it again (README: In QGIS, Offline)."),
    (re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES|hash mismatch", re.I),
     "a downloaded file does not match its published hash: a proxy or antivirus altered it; try again or install "
     "offline."),
    (re.compile(r"No space left on device|Errno 28", re.I),
     "the disk is full: free space and run the installer again."),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLError|SSL: ", re.I),
     "HTTPS to the package index failed (a proxy that inspects TLS, or no certificates): set the proxy in QGIS "
     "(Settings > Options > Network), or install offline from a wheel folder."),
    (re.compile(r"ProxyError|Max retries exceeded|Failed to establish a new connection|Network is unreachable|"
                r"Temporary failure in name resolution|getaddrinfo failed|timed out", re.I),
     "the package index cannot be reached: check the network or QGIS's proxy, or install offline from a wheel "
     "folder (WHEELS)."),
    (re.compile(r"ResolutionImpossible|conflicting dependencies|Cannot install .* because", re.I),
     "the packages need other versions of what QGIS already has loaded (pinned: {pins}); a newer QGIS may be needed."),
    (re.compile(r"Permission denied|Access is denied|WinError 5", re.I),
     "a file could not be written (permissions, or a file that another program holds open: close QGIS's other "
     "windows or your antivirus scan and try again)."),
)


class InstallError(ActionableError, RuntimeError):
    """An install, repair or uninstall failed; the message says why, what is still in use, and what to do."""


@dataclass
class GpuProbe:
    """What the NVIDIA driver offers, and why onnxruntime-gpu cannot use it (``problem``), if it cannot."""

    driver_cuda: tuple = None       # the CUDA version the driver supports, e.g. (13, 0)
    driver_version: str = ""
    gpus: list = field(default_factory=list)   # (name, (major, minor) compute capability or None)
    problem: str = None

    def describe(self) -> str:
        names = ", ".join(f"{name} (compute {cc[0]}.{cc[1]})" if cc else name for name, cc in self.gpus)
        cuda = f"CUDA {self.driver_cuda[0]}.{self.driver_cuda[1]}" if self.driver_cuda else "CUDA version unknown"
        return f"{names or 'no GPU listed'}; driver {self.driver_version or 'version unknown'}, {cuda}"


@dataclass
class Plan:
    profile: str
    requirements: list
    index_arguments: list
    gpu: bool
    notes: list = field(default_factory=list)


@dataclass
class InstallResult:
    folder: Path                    # the active environment (None after an uninstall)
    packages: dict                  # installed here: name -> version
    provided: list                  # requirements that QGIS's Python already satisfies
    modules: dict                   # the profile's modules as imported by the check: name -> version
    restart_needed: bool = False


_PROBE_CUDA = r"""
import ctypes, json, sys
name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
try:
    cuda = ctypes.CDLL(name)
except OSError:
    print(json.dumps({"error": "no NVIDIA driver (" + name + " cannot be loaded)"})); sys.exit()
version = ctypes.c_int()
gpus = []
if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and cuda.cuInit(0) == 0:
    count = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(count))
    for index in range(count.value):
        device, major, minor, text = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(device), index)
        cuda.cuDeviceGetName(text, 256, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
        gpus.append([text.value.decode(errors="replace"), [major.value, minor.value]])
print(json.dumps({"cuda": version.value, "gpus": gpus}))
"""

_CHECK_IMPORTS = r"""
import importlib, json, sys
site, modules = sys.argv[1], sys.argv[2].split(",")
sys.path.insert(0, site)
found = {}
for name in modules:
    module = importlib.import_module(name)
    found[name] = getattr(module, "__version__", "?")
import numpy
from osgeo import gdal_array
report = {"modules": found, "numpy": numpy.__file__, "gdal_array": gdal_array.__file__}
if "onnxruntime" in found:
    import onnxruntime
    report["providers"] = onnxruntime.get_available_providers()
print("SEGEARTH-CHECK " + json.dumps(report))
"""


def _hidden_window() -> dict:
    """Keep pip's console window from flashing up on Windows."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}


def _child_environment(temporary: str | os.PathLike | None = None, proxies: dict | None = None) -> dict:
    """QGIS's environment for pip and the probes; pip's own settings that would redirect or refuse the install are
    overridden, its temporary files go to ``temporary`` (removed with the install's scratch folder, also on
    cancel), and QGIS's proxy is passed in the environment (not on a command line that others can read)."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONIOENCODING="utf-8",
               PYTHONUNBUFFERED="1", PIP_REQUIRE_VIRTUALENV="false", PIP_USER="0")
    for name in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"):
        env.pop(name, None)
    if temporary:
        env.update(TMPDIR=str(temporary), TEMP=str(temporary), TMP=str(temporary))
    for scheme, url in (proxies or {}).items():
        env[f"{scheme.upper()}_PROXY"] = env[f"{scheme.lower()}_proxy"] = url
    return env


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_environment(),  # nosec B603
                          **_hidden_window())


def interpreter_candidates() -> list[Path]:
    """Where the interpreter QGIS embeds may be, most likely first. ``sys.executable`` is not always it: QGIS does
    not set it, so it can be the QGIS binary (Windows, macOS) or the first python3 on PATH (Linux)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    executable = Path(sys.executable) if sys.executable else None
    candidates = []
    if executable and executable.name.lower().startswith("python"):
        candidates.append(executable)
    prefixes = [Path(p) for p in dict.fromkeys((sys.prefix, sys.exec_prefix, sys.base_prefix))]
    if sys.platform == "win32":
        # OSGeo4W and the standalone installer: <root>\apps\Python3xx\python.exe is sys.prefix's python.exe.
        for prefix in prefixes:
            candidates += [prefix / "python.exe", prefix / "python3.exe", prefix / "Scripts" / "python.exe"]
        if executable:
            candidates += [executable.parent / "python.exe", executable.parent / "python3.exe"]
    else:
        for prefix in prefixes:
            candidates += [prefix / "bin" / f"python{version}", prefix / "bin" / "python3", prefix / "bin" / "python"]
        if sys.platform == "darwin" and executable:
            # QGIS.app: Contents/MacOS/QGIS runs Contents/Frameworks/Python.framework; a python3 sits in MacOS/bin.
            candidates += [executable.parent / "bin" / f"python{version}", executable.parent / "bin" / "python3"]
    return list(dict.fromkeys(candidates))


def find_interpreter(candidates: Iterable[str | os.PathLike] | None = None) -> Path:
    """The interpreter whose ``sys.prefix`` and version are this process's: a subprocess check of each candidate."""
    want = (os.path.realpath(sys.prefix), sys.version)
    tried = []
    for candidate in candidates if candidates is not None else interpreter_candidates():
        if not Path(candidate).is_file():
            continue
        try:
            answer = _run([str(candidate), "-c", "import json, sys; print(json.dumps([sys.prefix, sys.version]))"],
                          timeout=60)
            prefix, version = json.loads(answer.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            tried.append(f"{candidate} (does not run)")
            continue
        if (os.path.realpath(prefix), version) == want:
            return Path(candidate)
        tried.append(f"{candidate} (Python {version.split()[0]} at {prefix})")
    raise InstallError(f"cannot find the Python interpreter that QGIS runs (Python {platform.python_version()} at "
                       f"{sys.prefix}); tried: {'; '.join(tried) or 'nothing found'}. Install the packages by hand "
                       "with that interpreter (README: In QGIS).")


def probe_gpu(python: str | os.PathLike) -> GpuProbe:
    """The NVIDIA driver's CUDA version and GPUs, asked in a separate process (a broken driver cannot crash QGIS);
    nvidia-smi answers when the driver library does not load from Python."""
    if sys.platform == "darwin":
        return GpuProbe(problem="macOS has no CUDA; the CPU package runs there (natively on Apple silicon)")
    probe = GpuProbe()
    try:
        answer = json.loads(_run([str(python), "-c", _PROBE_CUDA], timeout=60).stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        answer = {"error": "the CUDA driver probe did not answer"}
    if "error" not in answer:
        probe.driver_cuda = (answer["cuda"] // 1000, answer["cuda"] % 1000 // 10) if answer["cuda"] else None
        probe.gpus = [(name, tuple(cc)) for name, cc in answer["gpus"]]
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listing = _run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"], timeout=30)
            rows = [[cell.strip() for cell in line.split(",")] for line in listing.stdout.splitlines() if line.strip()]
            if listing.returncode == 0 and rows:
                probe.driver_version = rows[0][1]
                if not probe.gpus:
                    probe.gpus = [(row[0], _compute_capability(row[2] if len(row) > 2 else "")) for row in rows]
    probe.problem = gpu_problem(probe, answer.get("error"))
    return probe


def _compute_capability(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def gpu_problem(probe: GpuProbe, driver_error: str | None = None) -> str | None:
    """Why onnxruntime-gpu (CUDA 13) cannot run with this driver and these GPUs, or None when it can."""
    if not probe.gpus:
        return driver_error or "no NVIDIA GPU found"
    if probe.driver_cuda is not None:
        if probe.driver_cuda < CUDA_DRIVER_MIN:
            return (f"the NVIDIA driver supports CUDA {probe.driver_cuda[0]}.{probe.driver_cuda[1]}; onnxruntime-gpu "
                    f"{ORT_VERSION} needs CUDA 13 (driver 580 or newer): update the driver to use the GPU")
    else:
        branch = re.match(r"(\d+)", probe.driver_version or "")
        if not branch:
            return "the NVIDIA driver's version cannot be read"
        if int(branch[1]) < CUDA_DRIVER_BRANCH_MIN:
            return (f"NVIDIA driver {probe.driver_version} is older than 580, the first with CUDA 13: update it to use "
                    "the GPU")
    usable = [cc for _, cc in probe.gpus if cc is None or cc >= COMPUTE_CAPABILITY_MIN]
    if not usable:
        return (f"the GPU ({probe.describe()}) is older than CUDA 13 supports (compute capability 7.5, Turing, or "
                "newer)")
    return None


def plan_install(profile: str, gpu: str, probe: GpuProbe | None, offline: bool) -> Plan:
    """The requirements for ``profile`` (onnx or full) with ``gpu`` auto/cuda/cpu, given the driver probe."""
    if profile not in PROFILES:
        raise InstallError(f"PROFILE must be one of {', '.join(PROFILES)}, got {profile!r}")
    notes = []
    if gpu == "cpu":
        use_gpu = False
        notes.append("the CPU package was asked for (GPU cpu)")
    elif probe is not None and probe.problem is None:
        use_gpu = True
        notes.append(f"NVIDIA GPU found: {probe.describe()}; installing onnxruntime-gpu with the CUDA 13 and cuDNN "
                     "wheels (only the driver is needed)")
    elif gpu == "cuda":
        raise InstallError(f"GPU cuda was asked for, but {probe.problem if probe else 'no probe ran'}. Choose GPU "
                           "auto or cpu, or fix the driver first.")
    else:
        use_gpu = False
        notes.append(f"installing the CPU package of onnxruntime: {probe.problem if probe else 'no GPU probe'}")
    requirements = [ORT_GPU if use_gpu else ORT_CPU, *PINS["profiles"]["onnx"]]
    index_arguments = []
    if sys.platform == "darwin" and _old_or_intel_mac():
        if profile == "full":
            raise InstallError(f"torch {_pinned('torch')} publishes no wheels for Intel Macs or macOS before 14, so "
                               "the full profile cannot be installed here; PROFILE onnx can (model bundles exported "
                               "elsewhere)")
        requirements = [ORT_OLD_MACOS, *(r for r in requirements[1:] if not r.startswith("numba"))]
        notes.append(f"{platform.machine()} Mac on macOS {platform.mac_ver()[0] or '?'}: {ORT_OLD_MACOS}, the last "
                     "onnxruntime with wheels for it, without numba (the upsampler's CPU loop falls back to numpy)")
    if profile == "full":
        requirements += PINS["profiles"]["full"]
        if sys.platform.startswith("linux") and not use_gpu and not offline:
            index_arguments += ["--extra-index-url", TORCH_CPU_INDEX]
            notes.append("torch comes from PyTorch's CPU index (no CUDA libraries to download)")
    return Plan(profile, requirements, index_arguments, use_gpu, notes)


def _old_or_intel_mac() -> bool:
    release = re.match(r"(\d+)", platform.mac_ver()[0] or "")
    return platform.machine() != "arm64" or (release is not None and int(release[1]) < 14)


def _pinned(name: str) -> str:
    return next(r.split("==")[1] for r in PINS["profiles"]["full"] if r.startswith(f"{name}=="))


def qgis_constraints(runtime_root: str | os.PathLike | None = None, installing: Iterable[str] = ()) -> dict[str, str]:
    """pip constraints that pin what the running QGIS has: its scientific stack and every distribution it has
    already imported (those cannot be replaced under it), except copies in our own runtime folder and the
    distributions this install is for (``installing``: requirement strings)."""
    names = set(QGIS_STACK)
    ours = {_canonical(_requirement_name(r)) for r in installing} | {"onnxruntime", "onnxruntime-gpu"}
    module_owners = getattr(importlib.metadata, "packages_distributions", dict)()
    stdlib = getattr(sys, "stdlib_module_names", ())
    for module in list(sys.modules):
        top = module.split(".")[0]
        if top not in stdlib and not top.startswith("_"):
            names.update(module_owners.get(top, ()))
    root = os.path.realpath(runtime_root) if runtime_root else None
    pins = {}
    for name in sorted(names, key=str.lower):
        try:
            dist = importlib.metadata.distribution(name)
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
        location = os.path.realpath(str(dist.locate_file("")))
        if root and (location + os.sep).startswith(root + os.sep):
            continue
        if dist.version and VERSION.match(dist.version) and _canonical(dist.metadata["Name"] or name) not in ours:
            pins[dist.metadata["Name"] or name] = dist.version
    return pins


def _pip_version(python: str | os.PathLike) -> tuple[int, int] | None:
    try:
        answer = _run([str(python), "-m", "pip", "--version"], timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"pip (\d+)\.(\d+)", answer.stdout) if answer.returncode == 0 else None
    return (int(match[1]), int(match[2])) if match else None


def pip_command(python: str | os.PathLike, tools_dir: str | os.PathLike, wheels: str | os.PathLike | None = None,
                proxies: dict | None = None, feedback: Feedback | None = None) -> list[str]:
    """How to run pip: the interpreter's own (22.2 or newer), else a pip wheel run in place (an interpreter without
    pip, e.g. Debian's python3 without python3-pip): from the wheel folder, the interpreter's bundled wheels, or
    downloaded (pinned by SHA-256; ``feedback`` sees the download and can cancel it)."""
    feedback = as_feedback(feedback)
    version = _pip_version(python)
    if version and version >= PIP_MIN:
        return [str(python), "-m", "pip"]
    found = f"pip {'.'.join(map(str, version))} is too old" if version else "the interpreter has no pip"
    feedback.info(f"pip: {found}; running pip from a wheel")
    for folder in ([Path(wheels)] if wheels else []) + bundled_pip_folders() + [Path(tools_dir)]:
        for wheel in sorted(folder.glob("pip-*.whl"), key=_wheel_version, reverse=True) if folder.is_dir() else []:
            if _wheel_version(wheel) >= PIP_MIN:
                return [str(python), str(wheel / "pip")]
    urls = [os.environ[PIP_WHEEL_URL_ENV]] if os.environ.get(PIP_WHEEL_URL_ENV) else PIP_WHEEL_URLS
    try:
        fetched = fetch(urls, Path(tools_dir) / PIP_WHEEL, sha256=PIP_WHEEL_SHA256, proxies=proxies,
                        feedback=feedback)
    except DownloadError as error:
        raise InstallError(f"QGIS's Python has no usable pip and {PIP_WHEEL} could not be downloaded ({error}); put "
                           "a pip wheel into the wheel folder (the README's pip download command includes pip)"
                           ) from None
    return [str(python), str(Path(fetched["path"]) / "pip")]


def bundled_pip_folders() -> list[Path]:
    """Where the interpreter keeps pip wheels of its own: ensurepip's, or Debian's python3-pip-whl."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return [Path(sys.base_prefix) / "lib" / version / "ensurepip" / "_bundled",
            Path(sys.base_prefix) / "Lib" / "ensurepip" / "_bundled", Path("/usr/share/python-wheels")]


def _wheel_version(path: str | os.PathLike) -> tuple[int, int]:
    match = re.match(r"pip-(\d+)\.(\d+)", Path(path).name)
    return (int(match[1]), int(match[2])) if match else (0, 0)


class _PipRun:
    """One pip (or interpreter) subprocess: its lines go to ``feedback``'s info as they come, pip's phases to its
    progress, and its cancel kills it."""

    def __init__(self, command: list[str], feedback: Feedback, env: dict | None = None) -> None:
        self.command, self.feedback = command, feedback
        self.env = env or _child_environment()
        self.lines = []
        self.fraction = 0.0

    def run(self) -> int:
        process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,  # nosec B603
                                   encoding="utf-8", errors="replace", env=self.env, **_hidden_window())
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                                  daemon=True)
        reader.start()
        try:
            while True:
                if self.feedback.cancelled():
                    raise Cancelled("cancelled")
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    break
                self._line(line.rstrip())
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            process.stdout.close()

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self.lines.append(line)
        self.feedback.info(f"  {line}")
        for prefix, fraction in PIP_PHASES:
            if line.lstrip().startswith(prefix) and fraction > self.fraction:
                self.fraction = fraction
                self.feedback.progress(fraction)


def diagnose(lines: Sequence[str], pins: dict[str, str]) -> str:
    """The first known cause in pip's output, phrased as what to do, or ''."""
    text = "\n".join(lines)
    for pattern, advice in DIAGNOSES:
        match = pattern.search(text)
        if match:
            name = next((g for g in match.groups() if g), "") if match.groups() else ""
            return advice.format(name or "a package", python=platform.python_version(),
                                 platform=f"{sys.platform} {platform.machine()}",
                                 pins=", ".join(f"{k} {v}" for k, v in pins.items() if k in QGIS_STACK) or "none")
    return ""


def _wheel_folder(wheels: str | os.PathLike, scratch: str | os.PathLike) -> Path:
    """``wheels`` as a folder holding the wheels at its top: a zip, or a folder with wheels in subfolders, is
    gathered into ``scratch``."""
    path = Path(wheels)
    if path.is_dir():
        if any(path.glob("*.whl")):
            return path
        found = list(path.rglob("*.whl"))
        if not found:
            raise InstallError(f"{path} holds no wheels (.whl files): make it with the README's pip download command")
        folder = Path(scratch) / "wheels"
        folder.mkdir(parents=True)
        for wheel in found:
            shutil.copy2(wheel, folder / wheel.name)
        return folder
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise InstallError(f"WHEELS must be a folder of wheels or a .zip of them: {path} is neither")
    folder = Path(scratch) / "wheels"
    folder.mkdir(parents=True)
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                name = Path(member.filename).name
                if name.endswith(".whl") and not member.is_dir():
                    with archive.open(member) as source, open(folder / name, "wb") as target:
                        shutil.copyfileobj(source, target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise InstallError(f"{path} is a damaged zip ({error}): copy or download it again") from None
    return folder


def _in_use(folder: str | os.PathLike) -> bool:
    """Whether this process has imported a module from ``folder`` (its files must stay until QGIS restarts)."""
    prefix = str(Path(folder).resolve()) + os.sep
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if origin and os.path.realpath(origin).startswith(prefix):
            return True
    return False


def _cleanup_inactive(root: str | os.PathLike, feedback: Feedback, keep: Iterable[str] = ()) -> None:
    """Delete the environments that are neither active nor in ``keep`` nor loaded in this process, nor an install
    that another QGIS is running now (marked incomplete, and recent)."""
    active = read_state(root).get("active")
    for folder in sorted(Path(root).glob("env-*")) if Path(root).is_dir() else []:
        marker = folder / INCOMPLETE
        running = marker.exists() and time.time() - marker.stat().st_mtime < STALE_PARTIAL_SECONDS
        if folder.name == active or folder.name in keep or running:
            continue
        if _in_use(folder):
            feedback.info(f"kept {folder.name}: this QGIS has loaded modules from it; it goes at an install after a "
                          "restart")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            feedback.info(f"could not delete all of {folder} (files in use, e.g. by another QGIS); it goes at a later "
                          "install")


@contextlib.contextmanager
def install_lock(root: str | os.PathLike) -> Iterator[None]:
    """One install or uninstall at a time per runtime folder, across QGIS windows and qgis_process."""
    handle = open(Path(root) / ".install.lock", "a+")  # noqa: SIM115 (held until the with-block ends)
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InstallError(f"another install or uninstall of {root} is running (another QGIS window or qgis_process):"
                           " let it finish, then run this again") from None
    try:
        yield
    finally:
        handle.close()


def install(root: str | os.PathLike, profile: str = "onnx", gpu: str = "auto", wheels: str | os.PathLike | None = None,
            index_url: str | None = None, proxies: dict | None = None, feedback: Feedback | None = None,
            python: str | os.PathLike | None = None) -> InstallResult:
    """Install ``profile`` into a new environment under ``root`` and make it the active one.

    ``wheels``: a folder or zip of wheels (offline: nothing else is used). ``index_url``: a package index instead of
    pip's configured one. ``proxies``: {"https": url} for pip and the pip download. ``python``: the interpreter
    (default: found, see ``find_interpreter``). Raises ``Cancelled`` or ``InstallError``; either way the previous
    runtime stays active and the new folder is removed. The previous environment is kept for QGIS sessions still
    running on it, and removed by the next install.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with install_lock(root):
        return _install(root, profile, gpu, wheels, index_url, proxies, as_feedback(feedback), python)


def _install(root: Path, profile: str, gpu: str, wheels: str | os.PathLike | None, index_url: str | None,
             proxies: dict | None, feedback: Feedback, python: str | os.PathLike | None) -> InstallResult:
    previous = read_state(root)
    previous_site = active_site(root)
    kept = (f"the previous runtime ({previous.get('profile')} profile, {previous_site.name}) is still in use"
            if previous_site else "nothing was installed")
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=root))
    site = None
    try:
        _cleanup_inactive(root, feedback)
        python = Path(python) if python else find_interpreter()
        feedback.info(f"QGIS's Python: {python} (Python {platform.python_version()}, {sys.platform} "
                      f"{platform.machine()})")
        folder = _wheel_folder(wheels, scratch) if wheels else None
        probe = None if gpu == "cpu" else probe_gpu(python)
        if probe is not None:
            feedback.info(f"GPU: {probe.describe() if probe.gpus else probe.problem}")
        plan = plan_install(profile, gpu, probe, offline=folder is not None)
        if folder is not None and plan.gpu and gpu == "auto" and not any(folder.glob("onnxruntime_gpu-*.whl")):
            plan = plan_install(profile, "cpu", probe, offline=True)
            plan.notes.append("the wheel folder has no onnxruntime-gpu wheel: installing the CPU package (add the GPU "
                              "wheels to the folder, see the README, to use the GPU)")
        for note in plan.notes:
            feedback.info(note)
        pins = qgis_constraints(root, plan.requirements)
        site = Path(tempfile.mkdtemp(prefix=f"env-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
        os.chmod(site, 0o755)  # nosec B103: others may share a SEGEARTH_RUNTIME_DIR (read, never write); mkdtemp makes it private
        (site / INCOMPLETE).write_text(f"{os.getpid()}\n")
        result = _install_into(site, scratch, root, plan, pins, python, folder, index_url, proxies, feedback)
        (site / INCOMPLETE).unlink()
    except BaseException as error:
        if site is not None:
            shutil.rmtree(site, ignore_errors=True)
        if isinstance(error, Cancelled):
            raise Cancelled(f"cancelled: {kept}") from None
        if isinstance(error, InstallError):
            raise InstallError(f"{error} ({kept})") from None
        if isinstance(error, Exception):
            raise InstallError(f"the install failed: {type(error).__name__}: {error} ({kept})") from error
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_state(root, {"active": site.name, "previous": previous_site.name if previous_site else None,
                       "profile": plan.profile, "gpu": plan.gpu, "packages": result.packages,
                       "provided": result.provided, "modules": result.modules, "pins": pins,
                       "python": {"executable": str(python), "version": platform.python_version(),
                                  "prefix": sys.prefix},
                       "source": str(wheels) if wheels else (index_url or "pip's configured index"),
                       "installed": time.strftime("%Y-%m-%d %H:%M:%S")})
    result.folder = site
    if previous_site is not None:
        remove_site(previous_site)
    result.restart_needed = any(module in sys.modules for module in PROFILE_MODULES[plan.profile])
    add_site(site)
    _cleanup_inactive(root, feedback, keep=[previous_site.name] if previous_site else [])
    feedback.progress(1.0)
    return result


def _install_into(site: Path, scratch: Path, root: Path, plan: Plan, pins: dict[str, str], python: Path,
                  folder: Path | None, index_url: str | None, proxies: dict | None,
                  feedback: Feedback) -> InstallResult:
    env = _child_environment(scratch, None if folder else proxies)
    index = []
    if folder:
        index = ["--no-index", "--find-links", str(folder)]
        feedback.info(f"offline: installing from the wheels in {folder}")
    elif index_url:
        index = ["--index-url", index_url]
    unmoved = feedback.part(0.0, 0.0)  # finding pip and resolving leave the bar at 0; it moves when they are done
    pip = pip_command(python, root / "tools", folder, proxies, unmoved)
    constraints = scratch / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()), encoding="utf-8")
    feedback.info("kept as QGIS has them: " + ", ".join(f"{k} {v}" for k, v in pins.items() if k in QGIS_STACK))
    common = ["--only-binary=:all:", "--no-input", "--progress-bar", "off", "-c", str(constraints), *index,
              *plan.index_arguments]

    report = scratch / "report.json"
    feedback.info("resolving against QGIS's Python: " + " ".join(plan.requirements))
    resolve = _PipRun([*pip, "install", "--dry-run", "--report", str(report), *common, *plan.requirements],
                      unmoved, env=env)
    if resolve.run() != 0 or not report.is_file():
        raise InstallError("pip could not resolve the packages: " + (diagnose(resolve.lines, pins) or
                                                                     " | ".join(resolve.lines[-3:])))
    wanted = [(item["metadata"]["name"], item["metadata"]["version"])
              for item in json.loads(report.read_text(encoding="utf-8"))["install"]]
    names = {_canonical(name) for name, _ in wanted}
    provided = [r for r in plan.requirements if _canonical(_requirement_name(r)) not in names]
    for requirement in provided:
        feedback.info(f"already provided by QGIS's Python: {requirement}")
    feedback.progress(0.1)

    if wanted:
        feedback.info(f"installing {len(wanted)} packages into {site}")
        step = _PipRun([*pip, "install", "--target", str(site), "--no-deps", "--no-warn-script-location",
                        *common, *(f"{name}=={version}" for name, version in wanted)], feedback.part(0.1, 0.75),
                       env=env)
        if step.run() != 0:
            raise InstallError("pip could not install the packages: " + (diagnose(step.lines, pins) or
                                                                         " | ".join(step.lines[-3:])))
    feedback.progress(0.88)
    feedback.info("checking the new runtime in a separate Python")
    check = _PipRun([str(python), "-c", _CHECK_IMPORTS, str(site), ",".join(plan_modules(plan))],
                    feedback.part(0.88, 0.0, info=False), env=env)
    code = check.run()
    report_line = next((line for line in reversed(check.lines) if line.startswith("SEGEARTH-CHECK ")), None)
    if code != 0 or report_line is None:
        raise InstallError("the installed packages do not import: " + " | ".join(check.lines[-4:]))
    checked = json.loads(report_line[len("SEGEARTH-CHECK "):])
    if Path(checked["numpy"]).resolve().is_relative_to(site.resolve()):
        raise InstallError("the install would shadow QGIS's numpy; nothing was activated")
    feedback.info("imports: " + ", ".join(f"{k} {v}" for k, v in checked["modules"].items()) +
                  f"; QGIS's numpy ({checked['numpy']}) and gdal_array still import")
    if "providers" in checked:
        feedback.info("onnxruntime execution providers available: " + ", ".join(checked["providers"]) +
                      " (whether CUDA really runs is checked, and reported, on the first run)")
    return InstallResult(None, dict(wanted), provided, checked["modules"])


def plan_modules(plan: Plan) -> list[str]:
    """The profile's modules that this plan installs (an old Mac's plan has no numba)."""
    names = {_canonical(_requirement_name(r)) for r in plan.requirements}
    return [m for m in PROFILE_MODULES[plan.profile] if m != "numba" or "numba" in names]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[=<>~!;]", requirement)[0]


def uninstall(root: str | os.PathLike, feedback: Feedback | None = None) -> InstallResult:
    """Deactivate and delete the runtime under ``root``; what this QGIS has imported from it stays loaded (and its
    folder stays) until QGIS restarts."""
    feedback = as_feedback(feedback)
    root = Path(root)
    if not root.is_dir():
        feedback.info(f"no runtime was installed under {root}")
        return InstallResult(None, {}, [], {})
    with install_lock(root):
        return _uninstall(root, feedback)


def _uninstall(root: Path, feedback: Feedback) -> InstallResult:
    site = active_site(root)
    state = read_state(root)
    if state:
        write_state(root, {k: v for k, v in state.items() if k not in ("active", "previous")} |
                    {"uninstalled": time.strftime("%Y-%m-%d %H:%M:%S")})
    if site is not None:
        remove_site(site)
    restart = site is not None and _in_use(site)
    _cleanup_inactive(root, feedback)
    feedback.info(f"removed {site}" if site else f"no runtime was installed under {root}")
    return InstallResult(None, {}, [], {}, restart_needed=restart)
