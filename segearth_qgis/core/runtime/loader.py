"""The one place that knows both backends: a bundle (folder or zip) to a model that ``segment_image`` and the
pipeline accept, on onnxruntime or torch, with what actually runs reported (like open_clip's factory)."""

import os
from pathlib import Path

from ..common.choices import BACKENDS
from ..method.model import SegmentationModel
from .bundle import BundleError, resolve_bundle, verify_bundle
from .sessions import DeviceUnavailable, RuntimeReport, check_precision
from .store import default_bundle


def load_model(path: str | os.PathLike | None = None, modality: str = "optical", backend: str = "auto",
               device: str = "auto", precision: str = "fp32") -> SegmentationModel:
    """``load_bundle`` of ``path``, or of the installed default model for ``modality`` when ``path`` is empty."""
    return load_bundle(path or default_bundle(modality), backend, device, precision)


def load_bundle(path: str | os.PathLike, backend: str = "auto", device: str = "auto",
                precision: str = "fp32") -> SegmentationModel:
    """A model ``segment_image`` accepts, from a bundle folder or zip; its ``runtime`` says what actually runs.

    ``backend``: ``onnx`` (onnxruntime), ``torch`` (needs the bundle's checkpoints) or ``auto`` (onnx, else torch
    when onnxruntime is missing or fails, with the reason in the report). ``device``: ``auto``, ``cuda`` or ``cpu``.
    ``precision``: ``fp32``, or ``fp16`` on CUDA with the torch backend (``auto`` then chooses torch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_precision(precision, "cuda", "torch")  # the name; what the device allows is checked once it is known
    folder = resolve_bundle(path)
    manifest = verify_bundle(folder)
    if precision == "fp16" and backend != "torch":
        if backend == "onnx" or not manifest.get("torch"):
            check_precision(precision, "cpu" if device == "cpu" else "cuda", "onnx")
        return _load_torch(folder, manifest, device, "auto: fp16 runs on the torch backend", precision)
    if backend == "torch":
        return _load_torch(folder, manifest, device, "", precision)
    try:
        from .onnx_backend import OnnxModel

        return OnnxModel(folder, manifest, device)
    except ImportError as error:
        if backend == "onnx" or not manifest.get("torch"):  # nothing else could run it: onnxruntime is what is missing
            raise
        return _load_torch(folder, manifest, device, f"auto: onnxruntime unavailable ({error})")


def _load_torch(folder: Path, manifest: dict, device: str, note: str, precision: str = "fp32") -> SegmentationModel:
    checkpoints = manifest.get("torch")
    if not checkpoints:
        raise BundleError(f"bundle {folder.name} was exported without checkpoints, so it cannot run on the torch "
                          "backend: use the onnx backend, or export it again without --no-checkpoints")
    try:
        import torch

        from ..method.torch_model import load_model_from_checkpoints
    except ImportError as error:
        if not note:  # the torch backend was asked for
            raise
        raise ImportError("neither onnxruntime nor torch can run here: install onnxruntime (pip install "
                          "onnxruntime-gpu, or onnxruntime on machines without an NVIDIA GPU)",
                          name="onnxruntime") from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA was requested but torch sees no usable CUDA GPU here: choose device 'cpu' or "
                                "'auto'")
    check_precision(precision, device, "torch")
    upsampler = checkpoints.get("upsampler")
    model = load_model_from_checkpoints(clip=folder / checkpoints["clip"],
                                        upsampler=folder / upsampler if upsampler else None,
                                        arch=str(folder / checkpoints["arch"]),
                                        quick_gelu=manifest["activation"] == "quick_gelu",
                                        attention=manifest["attention"], last_n=manifest["last_n"], device=device)
    model.precision = precision
    providers = [f"torch:{device}"]
    if device == "cuda" and upsampler:
        from ..method import simfeatup_cuda

        problem = simfeatup_cuda.cuda_problem()
        providers.append(f"SimFeatUp: {'numba-cuda fused adaptive conv' if problem is None else '121 torch slices'}")
        note = "; ".join(filter(None, [note, problem and f"no fused adaptive conv: {problem}"]))
    model.runtime = RuntimeReport("torch", device, providers, f"torch {torch.__version__}", note, precision)
    model.manifest = manifest
    model.bundle = folder
    return model
