"""Export a SegEarth-OV model to a bundle, validated against torch before it is written (needs torch and open_clip).

The encoder and the text encoder go through torch's dynamo exporter. SimFeatUp's two graphs (guidance -> per-pixel
kernels, and features + kernels -> upsampled features) have 4 x 121 slicing taps, which the dynamo exporter takes
minutes to trace with symbolic shapes, so they use the TorchScript exporter, which handles them in seconds.
"""

import json
import os
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import open_clip
import torch
from open_clip.tokenizer import default_bpe, tokenize
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch.export import Dim

from ..common import signals
from ..common.choices import MODALITIES
from ..common.failures import ActionableError
from ..common.feedback import Feedback, as_feedback
from ..method.simfeatup import apply_stage_kernels, weights_from_upsampler
from ..method.torch_model import REFERENCE_MEAN, REFERENCE_STD, SegEarthModel, load_model_from_checkpoints, model_config
from . import bundle as bundle_files
from .sessions import SESSIONS

OPSET = 18


class ExportError(ActionableError, RuntimeError):
    """The exported graphs do not reproduce torch within the tolerance; no bundle was written."""


class _Encoder(torch.nn.Module):
    def __init__(self, model: SegEarthModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, pos_grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_windows(x, pos_grid)


class _Text(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class _Kernels(torch.nn.Module):
    def __init__(self, upsampler: torch.nn.Module) -> None:
        super().__init__()
        self.upsampler = upsampler

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.upsampler.stage_kernels(x))


class _Fixup(torch.nn.Module):
    def __init__(self, stage: torch.nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, combined: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.stage.corrected_kernel_channels_last(combined, guidance)


class _Apply(torch.nn.Module):
    def __init__(self, radius: int) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, features: torch.Tensor, kernel1: torch.Tensor, kernel2: torch.Tensor, kernel3: torch.Tensor,
                kernel4: torch.Tensor) -> torch.Tensor:
        return apply_stage_kernels(features, [kernel1, kernel2, kernel3, kernel4], self.radius)


def _dynamo_export(module: torch.nn.Module, args: tuple, path: Path, dynamic_shapes: dict,
                   names: tuple[list[str], list[str]]) -> None:
    torch.onnx.export(module.eval(), args, str(path), dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                      external_data=False, input_names=names[0], output_names=names[1], verbose=False)


def _script_export(module: torch.nn.Module, args: tuple, path: Path, names: tuple[list[str], list[str]],
                   dynamic_axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET, input_names=names[0],
                          output_names=names[1], dynamic_axes=dynamic_axes)


def _export_graphs(model: SegEarthModel, folder: Path, window: int) -> None:
    batch, grid_h, grid_w = Dim("batch"), Dim("grid_h", min=3), Dim("grid_w", min=3)
    grid = window // model.patch_size
    x = torch.randn(2, 3, window, window)
    pos_grid = model.positional_embedding(grid, grid)[1:].reshape(grid, grid, -1).detach()
    _dynamo_export(_Encoder(model), (x, pos_grid), folder / bundle_files.VISUAL,
                   {"x": {0: batch, 2: 16 * grid_h, 3: 16 * grid_w}, "pos_grid": {0: grid_h, 1: grid_w}},
                   (["x", "pos_grid"], ["cls", "patches"]))
    tokens = tokenize(["a photo of a building.", "a photo of water."], model.clip.context_length)
    _dynamo_export(_Text(model.clip), (tokens,), folder / bundle_files.TEXT, {"tokens": {0: batch}},
                   (["tokens"], ["embeddings"]))
    if model.upsampler is None:
        return
    kernel_names = [f"kernel{i}" for i in range(1, 5)]
    kernel_axes = {name: {0: "batch", 2: f"height{i}", 3: f"width{i}"} for i, name in enumerate(kernel_names)}
    _script_export(_Kernels(model.upsampler), (x,), folder / bundle_files.KERNELS, (["x"], kernel_names),
                   {"x": {0: "batch", 2: "height", 3: "width"}, **kernel_axes})
    with torch.no_grad():
        kernels = model.upsampler.stage_kernels(x)
    features = torch.randn(2, 5, grid, grid)
    _script_export(_Apply(model.upsampler.up.radius), (features, *kernels), folder / bundle_files.APPLY,
                   (["features", *kernel_names], ["upsampled"]),
                   {"features": {0: "batch", 1: "channels", 2: "grid_h", 3: "grid_w"}, **kernel_axes,
                    "upsampled": {0: "batch", 1: "channels", 2: "height", 3: "width"}})
    taps = model.upsampler.up.diameter ** 2
    pixels = {0: batch, 1: Dim("height", min=2), 2: Dim("width", min=2)}
    _dynamo_export(_Fixup(model.upsampler.up), (torch.rand(2, 28, 28, taps), torch.randn(2, 28, 28, 3)),
                   folder / bundle_files.FIXUP, {"combined": pixels, "guidance": pixels},
                   (["combined", "guidance"], ["kernel"]))
    np.savez(folder / bundle_files.WEIGHTS, **weights_from_upsampler(model.upsampler))


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / max(1.0, np.abs(reference).max()))


def _validate(model: SegEarthModel, folder: Path, manifest: dict, window: int, tolerance: float,
              feedback: Feedback) -> dict[str, float]:
    """Run torch and onnxruntime on the same random inputs; returns the errors, raises if one exceeds the tolerance."""
    from .onnx_backend import OnnxModel

    onnx_model = OnnxModel(folder, manifest, "cpu")
    graph_model = OnnxModel(folder, manifest, "cpu", use_numba=False) if onnx_model.compiled_upsampler else onnx_model
    rng = np.random.default_rng(0)
    errors = {}
    queries = ["building", "water body", "tree,forest"]
    errors["tokenizer"] = float(np.abs(onnx_model.tokenizer([t.replace("{}", q) for q in queries
                                                              for t in manifest["prompt_templates"]])
                                       - tokenize([t(q) for q in queries for t in OPENAI_IMAGENET_TEMPLATES],
                                                  model.clip.context_length).numpy()).max())
    text = model.text_features(queries)
    errors["text_features"] = _relative_error(onnx_model.text_features(queries), text)
    sizes = [(window, window), (window + 2 * model.patch_size, window - model.patch_size)]
    with torch.no_grad():
        for height, width in sizes:
            windows = rng.standard_normal((2, 3, height, width)).astype(np.float32)
            torch_cls, torch_patches = model.encode_windows(torch.from_numpy(windows))
            cls, patches = onnx_model.encode_windows(windows)
            errors[f"cls_{height}x{width}"] = _relative_error(cls, torch_cls.numpy())
            errors[f"patches_{height}x{width}"] = _relative_error(patches, torch_patches.numpy())
            reference = model.reference_order_logits(torch.from_numpy(windows), torch.from_numpy(text), 0.3).numpy()
            errors[f"logits_{height}x{width}"] = _relative_error(onnx_model.window_logits(windows, text, 0.3),
                                                                 reference)
            if graph_model is not onnx_model:
                errors[f"logits_graph_apply_{height}x{width}"] = _relative_error(
                    graph_model.window_logits(windows, text, 0.3), reference)
    worst = max(errors.values())
    feedback.info("export check, largest relative difference (onnxruntime vs torch) per output, tolerance "
                  f"{tolerance:g}:\n" + "\n".join(f"  {name}: {value:.2e}" for name, value in errors.items()))
    if worst > tolerance:
        raise ExportError(f"the exported graphs differ from torch by {worst:.2e} (> tolerance {tolerance:g}); "
                          "no bundle was written")
    return errors


def _copy_checkpoints(folder: Path, clip: str | os.PathLike, upsampler: str | os.PathLike | None,
                      config: dict) -> dict:
    target = folder / bundle_files.TORCH_DIR
    target.mkdir()
    entry = {"clip": f"{bundle_files.TORCH_DIR}/clip{Path(clip).suffix or '.pt'}",
             "arch": f"{bundle_files.TORCH_DIR}/arch.json", "upsampler": None}
    shutil.copy2(clip, folder / entry["clip"])
    (folder / entry["arch"]).write_text(json.dumps(config, indent=1))
    if upsampler:
        entry["upsampler"] = f"{bundle_files.TORCH_DIR}/simfeatup{Path(upsampler).suffix or '.ckpt'}"
        shutil.copy2(upsampler, folder / entry["upsampler"])
    return entry


def export_bundle(clip: str | os.PathLike, upsampler: str | os.PathLike | None, arch: str, out: str | os.PathLike,
                  quick_gelu: bool = True, attention: str = "SegEarth", last_n: int = 1, modality: str = "optical",
                  gba_lambda: float = 0.3, window: int = 224, source: dict | None = None,
                  keep_checkpoints: bool = True, tolerance: float = 1e-4, make_zip: bool = False,
                  overwrite: bool = False, feedback: Feedback | None = None) -> Path:
    """Export and validate a bundle into the folder ``out`` (written under a temporary name, renamed when valid);
    what it does and the check's differences go to ``feedback``'s info lines."""
    feedback = as_feedback(feedback)
    out = Path(out)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another --out or remove it first")
    model = load_model_from_checkpoints(clip, upsampler, arch=arch, quick_gelu=quick_gelu, attention=attention,
                                        last_n=last_n, device="cpu")
    config = model_config(arch)
    visual = model.clip.visual
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    signals.register(partial)
    partial.mkdir()
    try:
        feedback.info(f"exporting {arch} ({attention}, last {last_n}, {'QuickGELU' if quick_gelu else 'GELU'}) to "
                      "ONNX ...")
        _export_graphs(model, partial, window)
        np.save(partial / bundle_files.POSITIONS, visual.positional_embedding.detach().float().numpy())
        shutil.copy2(default_bpe(), partial / bundle_files.VOCAB)
        manifest = {
            "format": bundle_files.FORMAT, "format_version": bundle_files.FORMAT_VERSION, "modality": modality,
            "architecture": Path(arch).stem if Path(arch).suffix == ".json" else arch, "architecture_config": config,
            "patch_size": model.patch_size, "window_size": window, "embed_dim": model.embed_dim,
            "width": visual.transformer.width, "layers": len(visual.transformer.resblocks),
            "context_length": model.clip.context_length, "image_mean": list(REFERENCE_MEAN),
            "image_std": list(REFERENCE_STD), "attention": attention, "last_n": last_n,
            "activation": "quick_gelu" if quick_gelu else "gelu", "gba_lambda": gba_lambda, "logit_scale": 50.0,
            "prompt_templates": [template("{}") for template in OPENAI_IMAGENET_TEMPLATES],
            "upsampler": {"type": "SimFeatUp JBUOne", "radius": model.upsampler.up.radius, "stages": 4}
            if model.upsampler is not None else None,
            "source": source or {"clip": {"file": Path(clip).name}, "upsampler": {"file": Path(upsampler).name}
                                 if upsampler else None},
            "exported_with": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                              "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opset": OPSET,
                              "python": platform.python_version()},
            "torch": _copy_checkpoints(partial, clip, upsampler, config) if keep_checkpoints else None,
        }
        manifest["files"] = bundle_files.file_entries(partial)
        manifest["validation"] = {"tolerance": tolerance,
                                  "relative_errors": _validate(model, partial, manifest, window, tolerance,
                                                                       feedback)}
        (partial / bundle_files.MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        SESSIONS.release(partial)
        shutil.rmtree(partial, ignore_errors=True)
        signals.unregister(partial)
    feedback.info(f"bundle written: {out}")
    if make_zip:
        feedback.info(f"zip written: {bundle_files.zip_bundle(out)}")
    return out
