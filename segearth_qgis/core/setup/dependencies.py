"""Where the plugin's own Python packages live (outside the plugin folder), what is installed, and how to say what is
missing: cheap enough for every QGIS start, so it never imports a heavy module.

Layout: ``runtime_home(profile_dir)`` (one per QGIS profile) / ``interpreter_tag()`` (one per Python version, ABI and
machine) / ``runtime.json`` (which environment is active) and ``env-*/`` (each a pip ``--target`` folder). An
install fills a new ``env-*`` and switches ``runtime.json`` to it only once it has been checked, so a failed or
cancelled install leaves the previous one in use.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

RUNTIME_DIR_ENV = "SEGEARTH_RUNTIME_DIR"   # overrides where runtimes live (tests, shared machines)
STATE_FILE = "runtime.json"
# The modules each profile makes importable: checked after an install, and used to say which profile is missing.
PROFILE_MODULES = {"onnx": ("onnxruntime", "ftfy", "regex", "numba"),
                   "full": ("onnxruntime", "ftfy", "regex", "numba", "torch", "open_clip", "onnx", "onnxscript")}
TORCH_MODULES = ("torch", "torchvision", "open_clip", "timm", "onnx", "onnxscript", "huggingface_hub", "safetensors")
# What detection reports: distribution names, and the module each provides.
DETECTED = (("onnxruntime-gpu", "onnxruntime"), ("onnxruntime", "onnxruntime"), ("torch", "torch"),
            ("open_clip_torch", "open_clip"))
_DLL_DIRECTORIES = []  # Windows: the handles of the DLL folders added, kept for the life of the process


def interpreter_tag() -> str:
    """One runtime per Python version, ABI and machine (Apple silicon and Rosetta builds differ), e.g.
    ``cpython-311-linux-x86_64``."""
    return f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}-{sys.platform}-{platform.machine().lower()}"


def runtime_home(profile_dir: str | os.PathLike) -> Path:
    """The folder of this QGIS profile's runtimes, outside the plugin folder (which QGIS replaces on every upgrade).

    ``SEGEARTH_RUNTIME_DIR`` wins. Windows: under %LOCALAPPDATA%, which a roaming profile does not copy around and
    whose short path keeps the CUDA wheels' files under the 260-character limit; elsewhere: in the QGIS profile.
    """
    profile_dir = Path(profile_dir)
    override = os.environ.get(RUNTIME_DIR_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        digest = hashlib.sha256(str(profile_dir.resolve()).encode()).hexdigest()[:8]
        return Path(os.environ["LOCALAPPDATA"]) / "segearth-qgis" / "runtimes" / f"{profile_dir.name}-{digest}"
    return profile_dir / "segearth-runtime"


def runtime_root(profile_dir: str | os.PathLike) -> Path:
    """This interpreter's runtimes under the profile's home."""
    return runtime_home(profile_dir) / interpreter_tag()


def read_state(root: str | os.PathLike) -> dict:
    """The ``runtime.json`` of ``root``, or {} when there is none or it cannot be read."""
    try:
        state = json.loads((Path(root) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(root: str | os.PathLike, state: dict) -> None:
    """Replace ``runtime.json`` atomically: a reader sees the old or the new state, never a half-written one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{STATE_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, root / STATE_FILE)


def active_site(root: str | os.PathLike) -> Path | None:
    """The active environment's folder, or None."""
    name = read_state(root).get("active")
    if not name or Path(name).name != name:
        return None
    site = Path(root) / name
    return site if site.is_dir() else None


def activate(profile_dir: str | os.PathLike) -> Path | None:
    """Put this profile's active runtime first on ``sys.path`` (and, on Windows, its CUDA folders on the DLL search
    path); returns the folder, or None when nothing is installed. Never raises: QGIS must start regardless."""
    try:
        site = active_site(runtime_root(profile_dir))
    except OSError:
        return None
    if site is None:
        return None
    return add_site(site)


def add_site(site: str | os.PathLike) -> Path:
    """Make the packages in ``site`` importable in this process, ahead of the interpreter's own."""
    site = str(site)
    if site not in sys.path:
        sys.path.insert(0, site)
    if sys.platform == "win32":
        # onnxruntime.preload_dlls() finds the nvidia-* wheels beside onnxruntime; these cover the other loaders.
        for pattern in ("nvidia/*/bin", "nvidia/*/bin/x86_64", "nvidia/*/bin/x64"):
            for folder in sorted(Path(site).glob(pattern)):
                try:
                    _DLL_DIRECTORIES.append(os.add_dll_directory(str(folder)))
                except OSError:
                    continue
    importlib.invalidate_caches()
    return Path(site)


def remove_site(site: str | os.PathLike) -> None:
    """Take ``site`` off ``sys.path`` (modules already imported from it stay loaded until QGIS restarts)."""
    site = str(site)
    while site in sys.path:
        sys.path.remove(site)
    importlib.invalidate_caches()


@dataclass
class RuntimeStatus:
    """What is importable now, found without importing it: distribution -> (version, folder)."""

    found: dict[str, tuple[str, str]] = field(default_factory=dict)
    active: Path | None = None

    def describe(self, distribution: str) -> str:
        version, folder = self.found[distribution]
        where = "runtime folder" if self.active and Path(folder) == self.active else folder
        return f"{distribution} {version} ({where})"

    def summary(self) -> str:
        parts = [self.describe(d) for d in ("onnxruntime-gpu", "onnxruntime") if d in self.found]
        parts = parts or ["onnxruntime: not installed"]
        for distribution, module in (("torch", "torch"), ("open_clip_torch", "open_clip")):
            parts.append(self.describe(distribution) if distribution in self.found else f"{module}: not installed")
        return "; ".join(parts)


def detect(active: str | os.PathLike | None = None) -> RuntimeStatus:
    """Which of onnxruntime / onnxruntime-gpu / torch / open_clip are installed, their versions and folders.
    Never raises: whatever cannot be looked up counts as not installed."""
    found = {}
    for distribution, module in DETECTED:
        try:
            spec = importlib.util.find_spec(module)
            dist = importlib.metadata.distribution(distribution) if spec is not None and spec.origin else None
        except (ImportError, ValueError, OSError):  # a broken install, or an import hook that refuses the name
            continue
        if dist is None:
            continue
        folder = Path(str(dist.locate_file(""))).resolve()
        if Path(spec.origin).resolve().is_relative_to(folder):  # not a copy that another folder shadows
            found[distribution] = (dist.version, str(folder))
    return RuntimeStatus(found, Path(active).resolve() if active else None)


def changed_since_install(root: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(name, version at install, version now) for QGIS's numpy and GDAL when they changed since the runtime in
    ``root`` was installed (a QGIS upgrade): its compiled packages may then need a repair."""
    state = read_state(root)
    pins = state.get("pins", {}) if state.get("active") else {}
    changed = []
    for name in ("numpy", "GDAL"):
        try:
            now = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if pins.get(name) and pins[name] != now:
            changed.append((name, pins[name], now))
    return changed


def profile_for(module: str) -> str:
    """The installer profile that provides ``module``."""
    return "full" if module.split(".")[0] in TORCH_MODULES else "onnx"


def broken_runtime_message(module: str, error: BaseException) -> str:
    """What to tell a user whose ``module`` is installed but fails to import (a damaged install, a missing DLL,
    a numpy that changed under it)."""
    return (f"{module} is installed but cannot be imported ({error}). Run Processing Toolbox > SegEarth-OV > Install "
            "dependencies with ACTION repair (qgis_process run segearth:install_dependencies -- ACTION=repair), "
            "then restart QGIS.")


def missing_runtime_message(module: str) -> str:
    """What to tell a user whose run needs ``module``: what it is for and the two ways to install it."""
    profile = profile_for(module)
    purpose = ("the torch backend, exports of the official weights and SAR training" if profile == "full"
               else "running model bundles (the ONNX backend)")
    return (f"{module} is not installed in the Python that QGIS runs (Python {platform.python_version()}); it is "
            f"needed for {purpose}. Install it with Processing Toolbox > SegEarth-OV > Install dependencies "
            f"(PROFILE {profile}), or from a shell: qgis_process run segearth:install_dependencies -- "
            f"PROFILE={profile}. Without internet, add WHEELS=<a folder or zip of wheels> (README: In QGIS).")
