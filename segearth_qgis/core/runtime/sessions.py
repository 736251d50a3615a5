"""onnxruntime sessions on an explicit device, with the execution providers actually in effect read back and reported.

onnxruntime-gpu lists CUDAExecutionProvider even where CUDA cannot run and then quietly runs on the CPU; here a
session is always checked after creation, ``cuda`` that cannot run is an error, and ``auto`` says why it fell back.
"""

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..common.choices import DEVICES, PRECISIONS
from ..common.failures import ActionableError
from .bundle import BundleError

if TYPE_CHECKING:
    import onnxruntime

LOG = logging.getLogger("segearth_qgis")
# Exact float32 on the GPU: TF32 tensor cores round matmul inputs to 10 bits, far outside the 1e-4 parity budget.
CUDA_PROVIDER_OPTIONS = {"use_tf32": "0"}
CPU_ONLY = ["CPUExecutionProvider"]
INSTALL_ORT = ("install onnxruntime into the Python that runs this (pip install onnxruntime-gpu==1.31.1 for NVIDIA "
               "GPUs with a CUDA 13 driver, else pip install onnxruntime)")


class DeviceUnavailable(ActionableError, RuntimeError):
    """The requested device cannot run here; the message says why and what to do."""


def check_precision(precision: str, device: str, backend: str) -> None:
    """Refuse a precision the resolved ``device`` and ``backend`` cannot run, saying what to choose instead."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    if device != "cuda":
        raise DeviceUnavailable("fp16 runs on a CUDA GPU only, and this model runs on the CPU, where half precision "
                                "is slower and less exact: choose precision fp32 (the default), or device cuda on a "
                                "machine with an NVIDIA GPU")
    if backend == "onnx":
        raise DeviceUnavailable("fp16 runs on the torch backend (a bundle exported with its checkpoints): the "
                                "bundle's ONNX graphs are float32. Choose backend torch for fp16, or precision fp32")


@dataclass
class RuntimeReport:
    """What actually runs a model: shown in logs and by the Processing algorithms."""

    backend: str                      # "onnx" or "torch"
    device: str                       # "cuda" or "cpu"
    providers: list[str] = field(default_factory=list)   # onnxruntime providers in effect, or the torch device
    versions: str = ""
    note: str = ""                    # why the device differs from the request, if it does
    precision: str = "fp32"           # what the encoder and SimFeatUp compute in (the head is always float32)

    def __str__(self) -> str:
        text = (f"{self.backend} backend ({self.versions}) on {self.device} in {self.precision}: "
                f"{', '.join(self.providers)}")
        return f"{text} [{self.note}]" if self.note else text


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"onnxruntime is not installed: {INSTALL_ORT}") from error
    return onnxruntime


def _preload_cuda_libraries(ort: ModuleType) -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN from the nvidia-* wheels (its documented preload)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # a machine without the libraries: the session check below reports it
        LOG.debug("onnxruntime.preload_dlls: %s", error)


def _session(path: str | os.PathLike,
             providers: list[str | tuple[str, dict[str, str]]]) -> "onnxruntime.InferenceSession":
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads must not spin: numpy and numba run on the same cores between the graphs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    state = ort.capi.onnxruntime_pybind11_state
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except (state.InvalidProtobuf, state.InvalidGraph, state.InvalidArgument, state.NoModel, state.Fail,
            state.RuntimeException) as error:
        if providers != CPU_ONLY:
            _session(path, CPU_ONLY)  # a file the CPU cannot load either is what failed, not the GPU set-up
            raise
        path = Path(path)
        raise BundleError(f"bundle {path.parent.name}: {path.name} cannot be loaded by onnxruntime ({error}): the "
                          "bundle is damaged; download or export it again") from error


def _nvidia_driver_missing() -> str | None:
    """Why CUDA cannot run before trying it (no NVIDIA driver library), or None when a driver is present."""
    if sys.platform == "darwin":
        return "macOS has no CUDA"
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return f"no NVIDIA driver found ({name} cannot be loaded)"
    return None


def cuda_problem(ort: ModuleType) -> str | None:
    """None when onnxruntime can plausibly run CUDA here, else the reason it cannot."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no CUDA provider; onnxruntime-gpu has"
    return _nvidia_driver_missing()


def create_session(path: str | os.PathLike, device: str) -> "onnxruntime.InferenceSession":
    """An InferenceSession on ``device`` ("cuda" or "cpu") whose providers in effect match it, else an error."""
    ort = _ort()
    if device == "cpu":
        return _session(path, CPU_ONLY)
    problem = cuda_problem(ort)
    if problem is None:
        _preload_cuda_libraries(ort)
        ort.set_default_logger_severity(3)
        session = _session(path, [("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS), "CPUExecutionProvider"])
        if session.get_providers()[0] == "CUDAExecutionProvider":
            return session
        problem = (f"onnxruntime could not start its CUDA provider and would run on {session.get_providers()[0]} "
                   "(it needs a driver for CUDA 13 and cuDNN 9)")
    raise DeviceUnavailable(f"CUDA was requested but {problem}: choose device 'cpu' or 'auto', or fix the GPU set-up")


class SessionCache:
    """Sessions shared per (file, device) across models in a process; onnxruntime's run() is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions = {}

    def get(self, path: str | os.PathLike, device: str) -> "onnxruntime.InferenceSession":
        key = (str(path), device)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = create_session(path, device)
            return self._sessions[key]

    def release(self, folder: str | os.PathLike) -> None:
        """Forget the sessions of every file under ``folder`` (the export's check runs on a folder then renamed)."""
        prefix = str(folder).rstrip("/") + "/"
        with self._lock:
            for key in [k for k in self._sessions if k[0].startswith(prefix)]:
                del self._sessions[key]


SESSIONS = SessionCache()


def resolve_onnx_device(device: str, probe_path: str | os.PathLike) -> tuple[str, str]:
    """The device to use for ``device`` in auto/cuda/cpu, and a note when auto falls back to the CPU."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device != "auto":
        SESSIONS.get(probe_path, device)
        return device, ""
    problem = cuda_problem(_ort())
    if problem is None:
        try:
            SESSIONS.get(probe_path, "cuda")
            return "cuda", ""
        except DeviceUnavailable as error:
            problem = str(error)
    SESSIONS.get(probe_path, "cpu")
    return "cpu", f"device auto chose the CPU: {problem}"
