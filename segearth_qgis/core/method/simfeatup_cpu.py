"""SimFeatUp on the CPU without torch: the per-pixel 11x11 kernels from the guidance image, and their application.

Per-pixel loops over 121 neighbours (the range kernel's dot products and softmax, the adaptive convolution, bicubic
x2) run numba-compiled and channels-last: onnxruntime and torch execute them as 121 whole-tensor slices, which is
memory-bound and about 10-20x slower on a CPU. Where numba is not installed the backends keep SimFeatUp in their
graphs instead (``numba_available``); only the bicubic resize has a numpy fallback, for positional embeddings.
Sums over the 121 taps run in the official tap order; channel dot products may be summed in SIMD lanes (float rounding
only, see REDUCTION_FLAGS).
"""

import math
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .simfeatup import JBUOne

_CUBIC_A = -0.75  # torch's bicubic (Keys, a = -0.75)
# channel dot products may be summed in SIMD lanes (reassociated) and fused: float rounding only, as torch's own
# einsum and conv choose their order; no approximate functions, NaN and infinity keep their IEEE meaning
REDUCTION_FLAGS = {"reassoc", "contract"}


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t`` (float32, like torch)."""
    t = t.astype(np.float32)
    a = np.float32(_CUBIC_A)

    def near(x: np.ndarray) -> np.ndarray:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far((1 - t) + 1)], axis=-1).astype(np.float32)


def _bicubic_taps(out_len: int, in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out_len, 4) and weights for torch's bicubic with ``align_corners=False``; ``scale`` = in/out."""
    src = np.float32(scale) * (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    floor = np.floor(src)
    index = floor.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    return np.clip(index, 0, in_len - 1), _cubic_weights(src - floor)


def bicubic_resize(array: np.ndarray, out_h: int, out_w: int, scale_h: float | None = None,
                   scale_w: float | None = None) -> np.ndarray:
    """torch ``interpolate(mode="bicubic", align_corners=False)`` over axes (-3, -2) of a channels-last float32 array.

    ``scale_h``/``scale_w`` are the input/output ratios torch uses: ``in/out`` for a given size, ``1/scale_factor``
    when torch is given a scale factor (as the reference's positional-embedding interpolation is).
    """
    in_h, in_w = array.shape[-3:-1]
    rows, wy = _bicubic_taps(out_h, in_h, scale_h if scale_h is not None else in_h / out_h)
    cols, wx = _bicubic_taps(out_w, in_w, scale_w if scale_w is not None else in_w / out_w)
    kernels = _numba_kernels()
    if kernels is not None and array.ndim == 4:
        array = np.ascontiguousarray(array, np.float32)
        horizontal = np.empty((*array.shape[:2], out_w, array.shape[3]), np.float32)
        kernels["resample_cols"](array, cols, wx, horizontal)
        out = np.empty((array.shape[0], out_h, out_w, array.shape[3]), np.float32)
        kernels["resample_rows"](horizontal, rows, wy, out)
        return out
    horizontal = sum(array[..., cols[:, k], :] * wx[:, k, None] for k in range(4))
    return sum(horizontal[..., rows[:, k], :, :] * wy[:, k, None, None] for k in range(4)).astype(np.float32)


def _import_numba() -> ModuleType | None:
    """numba with its compiled loops cached under the user's cache folder, or None where it is not installed."""
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "segearth-qgis", "numba"))
    try:
        import numba
    except ImportError:
        return None
    return numba


def _compile_adaptive_conv(numba: ModuleType) -> Callable:
    """``out[n,i,j] = sum_{a,b} kernel[n,i,j,a*d+b] * padded[n,i+a,j+b]``, taps in row-major order."""

    @numba.njit(parallel=True, cache=True)
    def adaptive_conv(padded: np.ndarray, kernel: np.ndarray, out: np.ndarray) -> None:
        batch, height, width, taps = kernel.shape
        channels = padded.shape[3]
        diameter = int(round(taps ** 0.5))
        for row in numba.prange(batch * height):
            n = row // height
            i = row % height
            for j in range(width):
                acc = out[n, i, j]
                for c in range(channels):
                    acc[c] = 0.0
                for a in range(diameter):
                    for b in range(diameter):
                        w = kernel[n, i, j, a * diameter + b]
                        src = padded[n, i + a, j + b]
                        for c in range(channels):
                            acc[c] += w * src[c]

    return adaptive_conv


def _compile_resample_cols(numba: ModuleType) -> Callable:
    """The horizontal pass of the bicubic resize: ``out[n,i,j] = sum_k src[n,i,index[j,k]] * weight[j,k]``."""

    @numba.njit(parallel=True, cache=True)
    def resample_cols(src: np.ndarray, index: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
        batch, height, _, channels = src.shape
        for row in numba.prange(batch * height):
            n = row // height
            i = row % height
            for j in range(index.shape[0]):
                acc = out[n, i, j]
                for c in range(channels):
                    acc[c] = 0.0
                for k in range(index.shape[1]):
                    w = weight[j, k]
                    line = src[n, i, index[j, k]]
                    for c in range(channels):
                        acc[c] += line[c] * w

    return resample_cols


def _compile_resample_rows(numba: ModuleType) -> Callable:
    """The vertical pass of the bicubic resize: ``out[n,i,j] = sum_k src[n,index[i,k],j] * weight[i,k]``."""

    @numba.njit(parallel=True, cache=True)
    def resample_rows(src: np.ndarray, index: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
        batch, _, width, channels = src.shape
        out_h = index.shape[0]
        for row in numba.prange(batch * out_h):
            n = row // out_h
            i = row % out_h
            for j in range(width):
                acc = out[n, i, j]
                for c in range(channels):
                    acc[c] = 0.0
                for k in range(index.shape[1]):
                    w = weight[i, k]
                    line = src[n, index[i, k], j]
                    for c in range(channels):
                        acc[c] += line[c] * w

    return resample_rows


def _compile_range_kernel(numba: ModuleType) -> Callable:
    """A stage's filter before its learned correction: the range kernel's dot products, softmax and the spatial
    kernel, per pixel over its neighbours."""

    @numba.njit(parallel=True, cache=True, fastmath=REDUCTION_FLAGS)
    def range_kernel(padded: np.ndarray, keys: np.ndarray, temperature: np.float32, spatial: np.ndarray,
                     out: np.ndarray) -> None:
        """Softmax over the neighbours of temperature * <key(neighbour), key(centre)>, times the spatial kernel,
        normalised to sum 1 (denominator at least 1e-7): out (N, H, W, d*d)."""
        batch, height, width, dim = keys.shape
        taps = spatial.shape[0]
        diameter = int(round(taps ** 0.5))
        for row in numba.prange(batch * height):
            n = row // height
            i = row % height
            for j in range(width):
                centre = keys[n, i, j]
                logits = out[n, i, j]
                best = -np.inf
                for a in range(diameter):
                    for b in range(diameter):
                        neighbour = padded[n, i + a, j + b]
                        dot = np.float32(0.0)
                        for c in range(dim):
                            dot += neighbour[c] * centre[c]
                        value = temperature * dot
                        logits[a * diameter + b] = value
                        best = max(best, value)
                total = np.float32(0.0)
                for t in range(taps):
                    logits[t] = np.exp(logits[t] - best)
                    total += logits[t]
                norm = np.float32(0.0)
                for t in range(taps):
                    logits[t] = logits[t] / total * spatial[t]
                    norm += logits[t]
                norm = max(norm, np.float32(1e-7))
                for t in range(taps):
                    logits[t] = logits[t] / norm

    return range_kernel


def _compile_cosine_head(numba: ModuleType) -> Callable:
    """The GBA cosine logits of shifted features against per-window text, one pass over the features."""

    @numba.njit(parallel=True, cache=True, fastmath=REDUCTION_FLAGS)
    def cosine_head(features: np.ndarray, offsets: np.ndarray, text: np.ndarray, gba: np.ndarray,
                    out: np.ndarray) -> None:
        """out[n, q, p] = <f + o, t_q> / |f + o| - gba[n, q] for f = features[n, p], o = offsets[n], t = text[n]."""
        batch, pixels, rank = features.shape
        for row in numba.prange(batch * pixels):
            n = row // pixels
            p = row % pixels
            f = features[n, p]
            o = offsets[n]
            square = np.float32(0.0)
            for c in range(rank):
                square += (f[c] + o[c]) * (f[c] + o[c])
            norm = np.sqrt(square)
            for q in range(text.shape[1]):
                t = text[n, q]
                dot = np.float32(0.0)
                for c in range(rank):
                    dot += (f[c] + o[c]) * t[c]
                out[n, q, p] = dot / norm - gba[n, q]

    return cosine_head


def _compile_gelu(numba: ModuleType) -> Callable:
    """The exact (erf) GELU as a parallel float32 ufunc."""

    @numba.vectorize(["float32(float32)"], target="parallel", cache=True)
    def gelu(x: np.float32) -> np.float32:
        return np.float32(0.5) * x * (np.float32(1.0) + np.float32(math.erf(x / math.sqrt(2.0))))

    return gelu


_KERNEL_COMPILERS = {"adaptive_conv": _compile_adaptive_conv, "resample_cols": _compile_resample_cols,
                     "resample_rows": _compile_resample_rows, "range_kernel": _compile_range_kernel,
                     "gelu": _compile_gelu, "cosine_head": _compile_cosine_head}


def _build_numba_kernels() -> dict[str, Callable] | None:
    """{name: compiled loop} for every kernel, or None where numba is not installed."""
    numba = _import_numba()
    if numba is None:
        return None
    return {name: compile_kernel(numba) for name, compile_kernel in _KERNEL_COMPILERS.items()}


_NUMBA = {}


def _numba_kernels() -> dict[str, Callable] | None:
    """The compiled loops, or None where numba is not installed (compiled on first use, once per process)."""
    if "kernels" not in _NUMBA:
        _NUMBA["kernels"] = _build_numba_kernels()
    return _NUMBA["kernels"]


def numba_available() -> bool:
    return _numba_kernels() is not None


def cosine_head(features: np.ndarray, offsets: np.ndarray, text: np.ndarray, gba: np.ndarray) -> np.ndarray:
    """GBA cosine logits (N, Q, P) of channels-last features (N, P, r) shifted by offsets (N, r), against per-window
    text (N, Q, r), minus gba (N, Q): one pass over the features where numba is installed."""
    features, offsets, text, gba = (np.ascontiguousarray(a, np.float32) for a in (features, offsets, text, gba))
    kernels = _numba_kernels()
    if kernels is not None:
        out = np.empty((features.shape[0], text.shape[1], features.shape[1]), np.float32)
        kernels["cosine_head"](features, offsets, text, gba, out)
        return out
    shifted = features + offsets[:, None, :]
    cosines = (shifted @ text.transpose(0, 2, 1)) / np.linalg.norm(shifted, axis=2, keepdims=True)
    return (cosines - gba[:, None, :]).transpose(0, 2, 1)


def adaptive_conv_channels_last(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``out[n,i,j,c] = sum_{a,b} padded[n,i+a,j+b,c] * kernel[n,i,j,a*d+b]``; padded (N,H+2r,W+2r,C) float32."""
    out = np.empty((*kernel.shape[:3], padded.shape[3]), np.float32)
    _numba_kernels()["adaptive_conv"](np.ascontiguousarray(padded, np.float32),
                                      np.ascontiguousarray(kernel, np.float32), out)
    return out


def apply_stage_kernels(features: np.ndarray, kernels: list[np.ndarray], radius: int = 5) -> np.ndarray:
    """Run the 4 upsampling stages on channels-last features (N, h, w, C) with kernels [(N, 2^k h, 2^k w, d*d)]."""
    x = np.ascontiguousarray(features, np.float32)
    for kernel in kernels:
        height, width = kernel.shape[1:3]
        x = bicubic_resize(x, height, width)
        x = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
        x = adaptive_conv_channels_last(x, kernel)
    return x


def weights_from_upsampler(upsampler: "JBUOne") -> dict[str, np.ndarray]:
    """The JBUOne parameters the CPU path needs beside the graphs, as float32 arrays (``simfeatup_weights.npz``)."""
    stage = upsampler.up
    arrays = {
        "range_temp": stage.range_temp, "sigma_spatial": stage.sigma_spatial,
        "range_w0": stage.range_proj[0].weight[:, :, 0, 0], "range_b0": stage.range_proj[0].bias,
        "range_w1": stage.range_proj[3].weight[:, :, 0, 0], "range_b1": stage.range_proj[3].bias,
        "projection_w": upsampler.fixup_proj[1].weight[:, :, 0, 0], "projection_b": upsampler.fixup_proj[1].bias,
    }
    return {name: value.detach().cpu().float().numpy() for name, value in arrays.items()}


def _spatial_kernel(sigma: np.ndarray, diameter: int) -> np.ndarray:
    offsets = np.linspace(-1, 1, diameter, dtype=np.float32)
    squared = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(-1)
    return np.exp(-squared / np.float32(2 * np.float32(sigma) ** 2)).astype(np.float32)


def _conv1x1(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = x.reshape(-1, x.shape[-1]) @ np.ascontiguousarray(weight.T)
    out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def normalised_range_kernel(guidance: np.ndarray, weights: dict[str, np.ndarray], radius: int = 5) -> np.ndarray:
    """A stage's filter before its learned correction, channels-last (N, H, W, d*d), from guidance (N, H, W, 3)."""
    kernels = _numba_kernels()
    keys = _conv1x1(kernels["gelu"](_conv1x1(guidance, weights["range_w0"], weights["range_b0"])),
                    weights["range_w1"], weights["range_b1"])
    keys = np.ascontiguousarray(keys, np.float32)
    padded = np.pad(keys, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    temperature = np.float32(min(max(math.exp(float(weights["range_temp"])), 1e-4), 1e4))
    spatial = _spatial_kernel(weights["sigma_spatial"], 2 * radius + 1)
    combined = np.empty((*keys.shape[:3], spatial.shape[0]), np.float32)
    kernels["range_kernel"](padded, keys, temperature, spatial, combined)
    return combined


def stage_kernels(image: np.ndarray, weights: dict[str, np.ndarray],
                  correct: Callable[[np.ndarray, np.ndarray], np.ndarray], radius: int = 5) -> list[np.ndarray]:
    """The four stages' filters, channels-last, for a normalised image (N, 3, H, W).

    The guidance of stage k is the image average-pooled by 2^(3-k); ``correct(filter, guidance)`` applies the learned
    correction (a BLAS-heavy MLP: onnxruntime or torch run it faster than numpy here).
    """
    guidance = np.ascontiguousarray(image.transpose(0, 2, 3, 1), np.float32)
    out = []
    for k in range(4):
        factor = 2 ** (3 - k)
        n, height, width, _ = guidance.shape
        pooled = guidance.reshape(n, height // factor, factor, width // factor, factor, 3).mean(axis=(2, 4))
        pooled = np.ascontiguousarray(pooled, np.float32)
        out.append(np.ascontiguousarray(correct(normalised_range_kernel(pooled, weights, radius), pooled)))
    return out
