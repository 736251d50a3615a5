"""The onnxruntime backend: runs a bundle's graphs with numpy around them, no torch needed.

On a CPU with numba SimFeatUp's per-pixel 121-neighbour loops run compiled (``simfeatup_cpu``), since onnxruntime
executes them as 121 memory-bound whole-tensor slices, 10-20x slower. On CUDA the bundle's kernel graph leaves its
outputs on the device, where numba's CUDA target runs the stages and the head (``simfeatup_cuda``); where it cannot,
and on CPUs without numba, SimFeatUp runs as the bundle's two graphs (guidance -> kernels, features + kernels ->
upsampled).
"""

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..method import simfeatup_cpu, simfeatup_cuda
from ..method.head import patch_grid_logits, upsampled_logits
from ..method.tokenizer import ClipTokenizer
from . import bundle as bundle_files
from .sessions import LOG, SESSIONS, RuntimeReport, resolve_onnx_device

_TEXT_CACHE = {}
_TEXT_LOCK = threading.Lock()


class OnnxModel:
    """A bundle on onnxruntime, with the interface ``segment_image`` expects."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", use_numba: bool = True) -> None:
        import onnxruntime

        self.bundle = folder
        self.manifest = manifest
        self.patch_size = manifest["patch_size"]
        self.embed_dim = manifest["embed_dim"]
        self.image_mean = tuple(manifest["image_mean"])
        self.image_std = tuple(manifest["image_std"])
        self.templates = manifest["prompt_templates"]
        self.has_upsampler = manifest["upsampler"] is not None
        self.device, note = resolve_onnx_device(device, folder / bundle_files.VISUAL)
        self.encoder = SESSIONS.get(folder / bundle_files.VISUAL, self.device)
        self.text_encoder = SESSIONS.get(folder / bundle_files.TEXT, self.device)
        self.compiled_upsampler = self.device == "cpu" and use_numba and simfeatup_cpu.numba_available()
        device_problem = simfeatup_cuda.cuda_problem() if self.device == "cuda" and self.has_upsampler else None
        self.device_upsampler = self.device == "cuda" and self.has_upsampler and device_problem is None
        if self.has_upsampler:
            with np.load(folder / bundle_files.WEIGHTS) as weights:
                self.upsampler_weights = dict(weights)
            if self.compiled_upsampler:
                self.fixup = SESSIONS.get(folder / bundle_files.FIXUP, self.device)
            else:
                self.kernels = SESSIONS.get(folder / bundle_files.KERNELS, self.device)
                if not self.device_upsampler:
                    self.apply = SESSIONS.get(folder / bundle_files.APPLY, self.device)
        positions = np.load(folder / bundle_files.POSITIONS)
        self.native_grid = int(round((positions.shape[0] - 1) ** 0.5))
        self.positions = positions
        self._grids = {}
        self.tokenizer = ClipTokenizer(folder / bundle_files.VOCAB, manifest["context_length"])
        providers = self.encoder.get_providers()
        if self.has_upsampler and self.compiled_upsampler:
            providers = [*providers, "numba (SimFeatUp per-pixel loops)"]
        if self.device_upsampler:
            providers = [*providers, "numba-cuda (SimFeatUp stages and head on the device)"]
        elif device_problem:
            note = "; ".join(filter(None, [note, f"SimFeatUp in the bundle's graphs: {device_problem}"]))
        self.runtime = RuntimeReport("onnx", self.device, providers, f"onnxruntime {onnxruntime.__version__}", note)
        LOG.info("model %s: %s", folder.name, self.runtime)

    def position_grid(self, grid_h: int, grid_w: int) -> np.ndarray:
        """Patch positional embeddings (grid_h, grid_w, width), interpolated as the reference does when needed."""
        key = (grid_h, grid_w)
        if key not in self._grids:
            patches = self.positions[1:]
            side = self.native_grid
            if grid_h * grid_w == patches.shape[0]:
                grid = patches.reshape(grid_h, grid_w, -1)
            else:
                grid = simfeatup_cpu.bicubic_resize(patches.reshape(1, side, side, -1), grid_h, grid_w,
                                                1 / ((grid_h + 0.1) / side), 1 / ((grid_w + 0.1) / side))[0]
            self._grids[key] = np.ascontiguousarray(grid, np.float32)
        return self._grids[key]

    def encode_windows(self, windows: np.ndarray) -> list[np.ndarray]:
        grid_h, grid_w = windows.shape[2] // self.patch_size, windows.shape[3] // self.patch_size
        return self.encoder.run(None, {"x": windows, "pos_grid": self.position_grid(grid_h, grid_w)})

    def window_logits(self, windows: np.ndarray, text_features: np.ndarray, gba_lambda: float) -> np.ndarray:
        windows = np.ascontiguousarray(windows, np.float32)
        cls, patches = self.encode_windows(windows)
        if not self.has_upsampler:
            return patch_grid_logits(cls, patches, text_features, gba_lambda)
        weights = self.upsampler_weights
        if self.compiled_upsampler:
            kernels = simfeatup_cpu.stage_kernels(windows, weights, self._correct)
            upsample = lambda grid: simfeatup_cpu.apply_stage_kernels(grid, kernels)  # noqa: E731
        elif self.device_upsampler:
            on_device = self._kernels_on_device(windows)  # OrtValues, alive while their numba views are used
            upsample = lambda grid: simfeatup_cuda.upsample_on_device(  # noqa: E731
                grid, [simfeatup_cuda.ort_device_array(value) for value in on_device])
            return upsampled_logits(cls, patches, text_features, gba_lambda, weights["projection_w"],
                                    weights["projection_b"], upsample, simfeatup_cuda.head_on_device)
        else:
            upsample = lambda grid: self._apply_graphs(grid, windows)  # noqa: E731
        return upsampled_logits(cls, patches, text_features, gba_lambda, weights["projection_w"],
                                weights["projection_b"], upsample)

    def _kernels_on_device(self, windows: np.ndarray) -> list:
        """The four stages' kernels of the whole batch from the bundle's kernel graph, left on the GPU."""
        binding = self.kernels.io_binding()
        binding.bind_cpu_input("x", windows)
        for output in self.kernels.get_outputs():
            binding.bind_output(output.name, self.device)
        self.kernels.run_with_iobinding(binding)
        return binding.get_outputs()

    def _correct(self, combined: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        return self.fixup.run(None, {"combined": combined, "guidance": guidance})[0]

    def _apply_graphs(self, grid: np.ndarray, windows: np.ndarray, channels_per_run: int = 32) -> np.ndarray:
        """SimFeatUp's two graphs per window: the kernels stay where they were computed (on the GPU under CUDA,
        bound with io_binding), and the apply graph filters 32 channels per run (exact: every channel is filtered
        alike). onnxruntime runs the graph's 121 slices of a stage as soon as they are ready, so its memory grows
        with the channels fed (all 197 channels of a ViT-B/16 window took 18 GB on an H100)."""
        batch, height, width, rank = grid.shape
        out = np.empty((batch, 16 * height, 16 * width, rank), np.float32)
        kernel_names = [output.name for output in self.kernels.get_outputs()]
        upsampled_name = self.apply.get_outputs()[0].name
        for n in range(batch):
            kernels = self.kernels.io_binding()
            kernels.bind_cpu_input("x", np.ascontiguousarray(windows[n:n + 1]))
            for name in kernel_names:
                kernels.bind_output(name, self.device)
            self.kernels.run_with_iobinding(kernels)
            on_device = kernels.get_outputs()
            for start in range(0, rank, channels_per_run):
                apply = self.apply.io_binding()
                for i, kernel in enumerate(on_device):
                    apply.bind_ortvalue_input(f"kernel{i + 1}", kernel)
                chunk = grid[n:n + 1, :, :, start:start + channels_per_run]
                apply.bind_cpu_input("features", np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)))
                apply.bind_output(upsampled_name, "cpu")
                self.apply.run_with_iobinding(apply)
                out[n, :, :, start:start + channels_per_run] = apply.copy_outputs_to_cpu()[0][0].transpose(1, 2, 0)
        return out

    def text_features(self, queries: Sequence[str]) -> np.ndarray:
        """Per query: the manifest's prompt templates, embeddings normalised, averaged, normalised: (Q, D)."""
        key = (self.manifest["files"][bundle_files.TEXT]["sha256"], tuple(self.templates), tuple(queries))
        with _TEXT_LOCK:
            if key in _TEXT_CACHE:
                return _TEXT_CACHE[key]
        features = np.stack([self._encode_query(query) for query in queries])
        with _TEXT_LOCK:
            _TEXT_CACHE[key] = features
        return features

    def _encode_query(self, query: str) -> np.ndarray:
        tokens = self.tokenizer([template.replace("{}", query) for template in self.templates])
        embedded = self.text_encoder.run(None, {"tokens": tokens})[0]
        embedded = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
        mean = embedded.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)
