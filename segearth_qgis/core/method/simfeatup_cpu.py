"""SimFeatUp on the CPU without torch: the per-pixel 11x11 kernels from the guidance image, and their application.

Per-pixel loops over 121 neighbours (the range kernel's keys, dot products and softmax, the adaptive convolution,
bicubic x2) run numba-compiled: onnxruntime and torch execute them as 121 whole-tensor slices, which is memory-bound
and about 10-20x slower on a CPU. Where numba is not installed the backends keep SimFeatUp in their graphs instead
(``numba_available``); only the bicubic resize has a numpy fallback, for positional embeddings. Sums over the 121 taps
and the range kernel's channel sums run in order (FMA-contracted); the cosine head's channel dot products may be
summed in SIMD lanes (float rounding only, see REDUCTION_FLAGS).
"""

import math
import os
from collections.abc import Callable
from types import ModuleType

import numpy as np

_CUBIC_A = -0.75  # torch's bicubic (Keys, a = -0.75)
# channel dot products may be summed in SIMD lanes (reassociated) and fused: float rounding only, as torch's own
# einsum and conv choose their order; no approximate functions, NaN and infinity keep their IEEE meaning
REDUCTION_FLAGS = {"reassoc", "contract"}
RADIUS, DIAMETER = 5, 11  # SimFeatUp's 11x11 neighbourhood (the compiled loops are written for it)
STRIP_WIDTH = 32  # adaptive conv: columns per task, so the 11 source rows of a strip stay in L2 (~370 KB at 197 ch)
SQRT_HALF = 0.7071067811865476
# Cephes' expf (as in sse_mathfun's exp_ps): numba has no vectorised exp without Intel SVML, which the PyPI llvmlite
# lacks; k = round(x log2 e), r = x - k ln 2 in two parts (Cody-Waite), exp(r) by the polynomial, times 2^k; <= 2 ulp
LOG2E = 1.4426950408889634
EXP_C1, EXP_C2 = 0.693359375, -2.12194440e-4
EXP_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
EXP_MIN = -87.33654  # exp below it leaves float32's normal range: 0 (a softmax term <1e-38 of the largest)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t`` (float32, like torch)."""
    t = t.astype(np.float32)
    a = np.float32(_CUBIC_A)

    def near(x: np.ndarray) -> np.ndarray:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far((1 - t) + 1)], axis=-1).astype(np.float32)


def bicubic_taps(out_len: int, in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
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
    rows, wy = bicubic_taps(out_h, in_h, scale_h if scale_h is not None else in_h / out_h)
    cols, wx = bicubic_taps(out_w, in_w, scale_w if scale_w is not None else in_w / out_w)
    kernels = _numba_kernels()
    if kernels is not None and array.ndim == 4:
        array = np.ascontiguousarray(array, np.float32)
        horizontal = np.empty((*array.shape[:2], out_w, array.shape[3]), np.float32)
        kernels["resample_cols"](array, cols, wx, horizontal)
        out = np.empty((array.shape[0], out_h, out_w, array.shape[3]), np.float32)
        kernels["resample_rows"](horizontal, rows, wy, out, 0)
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
    """``out[n,i,j] = sum_{a,b} kernel[n,i,j,a*d+b] * padded[n,i+a,j+b]``, taps in row-major order (d = 11).

    Each channel's sum runs tap by tap as in the official loop, but a tap row's 11 products are added in one
    expression, so the running sum stays in a register for 11 taps instead of going through memory after each.
    Column strips of STRIP_WIDTH pixels keep the 11 source rows a strip reads in the core's L2 cache.
    """

    @numba.njit(parallel=True, cache=True, fastmath={"contract"})
    def adaptive_conv(padded: np.ndarray, kernel: np.ndarray, out: np.ndarray) -> None:
        batch, height, width, _ = kernel.shape
        channels = padded.shape[3]
        strips = (width + STRIP_WIDTH - 1) // STRIP_WIDTH
        for task in numba.prange(batch * strips):
            n = task // strips
            first = (task % strips) * STRIP_WIDTH
            for i in range(height):
                for j in range(first, min(first + STRIP_WIDTH, width)):
                    acc = out[n, i, j]
                    w = kernel[n, i, j]
                    for a in range(DIAMETER):
                        s = padded[n, i + a]  # one base array for the 11 reads, so one aliasing check vectorises
                        t = a * DIAMETER
                        w0, w1, w2, w3, w4, w5 = w[t], w[t + 1], w[t + 2], w[t + 3], w[t + 4], w[t + 5]
                        w6, w7, w8, w9, w10 = w[t + 6], w[t + 7], w[t + 8], w[t + 9], w[t + 10]
                        if a == 0:
                            for c in range(channels):
                                acc[c] = (w0 * s[j, c] + w1 * s[j + 1, c] + w2 * s[j + 2, c] + w3 * s[j + 3, c]
                                          + w4 * s[j + 4, c] + w5 * s[j + 5, c] + w6 * s[j + 6, c]
                                          + w7 * s[j + 7, c] + w8 * s[j + 8, c] + w9 * s[j + 9, c]
                                          + w10 * s[j + 10, c])
                        else:
                            for c in range(channels):
                                acc[c] = (acc[c] + w0 * s[j, c] + w1 * s[j + 1, c] + w2 * s[j + 2, c]
                                          + w3 * s[j + 3, c] + w4 * s[j + 4, c] + w5 * s[j + 5, c]
                                          + w6 * s[j + 6, c] + w7 * s[j + 7, c] + w8 * s[j + 8, c]
                                          + w9 * s[j + 9, c] + w10 * s[j + 10, c])

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
    """The vertical pass of the bicubic resize: ``out[n,o+i,o+j] = sum_k src[n,index[i,k],j] * weight[i,k]`` (``o``
    an offset, to write into the interior of a padded array)."""

    @numba.njit(parallel=True, cache=True)
    def resample_rows(src: np.ndarray, index: np.ndarray, weight: np.ndarray, out: np.ndarray, offset: int) -> None:
        batch, _, width, channels = src.shape
        out_h = index.shape[0]
        for row in numba.prange(batch * out_h):
            n = row // out_h
            i = row % out_h
            for j in range(width):
                acc = out[n, offset + i, offset + j]
                for c in range(channels):
                    acc[c] = 0.0
                for k in range(index.shape[1]):
                    w = weight[i, k]
                    line = src[n, index[i, k], j]
                    for c in range(channels):
                        acc[c] += line[c] * w

    return resample_rows


def _compile_range_keys(numba: ModuleType) -> Callable:
    """The range kernel's keys (1x1 conv, exact GELU, 1x1 conv) of the reflect-padded guidance, planar."""

    @numba.njit(parallel=True, cache=True, fastmath={"contract"})
    def range_keys(guidance: np.ndarray, w0: np.ndarray, b0: np.ndarray, w1: np.ndarray, b1: np.ndarray,
                   out: np.ndarray) -> None:
        """out[n, c, y, x] (N, K, H+2r, W+2r): keys of guidance (N, H, W, 3) at the reflected pixel (y-r, x-r), which
        equals reflect-padding the keys (a 1x1 map is pointwise)."""
        batch, height, width, _ = guidance.shape
        dim, padded_h, padded_w = out.shape[1:]
        columns = np.empty(padded_w, np.int64)
        for x in range(padded_w):  # reflect without repeating the edge, as np.pad(mode="reflect")
            source = abs(x - RADIUS)
            columns[x] = source if source < width else 2 * (width - 1) - source
        for row in numba.prange(batch * padded_h):
            n = row // padded_h
            y = row % padded_h
            source = abs(y - RADIUS)
            line = guidance[n, source if source < height else 2 * (height - 1) - source]
            hidden = np.empty((dim, padded_w), np.float32)
            for o in range(dim):
                h = hidden[o]
                for x in range(padded_w):
                    g = line[columns[x]]
                    v = b0[o] + w0[o, 0] * g[0] + w0[o, 1] * g[1] + w0[o, 2] * g[2]
                    h[x] = np.float32(0.5) * v * (np.float32(1.0) + math.erf(v * np.float32(SQRT_HALF)))
            for c in range(dim):
                key = out[n, c, y]
                key[:] = 0.0
                for o in range(dim):
                    weight = w1[c, o]
                    h = hidden[o]
                    for x in range(padded_w):
                        key[x] += weight * h[x]
                for x in range(padded_w):
                    key[x] += b1[c]

    return range_keys


def _compile_range_kernel(numba: ModuleType) -> Callable:
    """A stage's filter before its learned correction: the range kernel's dot products, softmax and the spatial
    kernel, per pixel over its neighbours, vectorised along an image row (planar keys, no horizontal sums)."""

    @numba.njit(parallel=True, cache=True, fastmath={"contract"})
    def range_kernel(keys: np.ndarray, temperature: np.float32, spatial: np.ndarray, out: np.ndarray) -> None:
        """Softmax over the neighbours of temperature * <key(neighbour), key(centre)>, times the spatial kernel,
        normalised to sum 1 (denominator at least 1e-7): out (N, H, W, d*d) from padded planar keys (N, K, H+2r,
        W+2r). Dot products sum the channels in order, the softmax sums the taps in order."""
        batch, dim, padded_h, padded_w = keys.shape
        taps = spatial.shape[0]
        height, width = padded_h - 2 * RADIUS, padded_w - 2 * RADIUS
        for row in numba.prange(batch * height):
            n = row // height
            i = row % height
            logits = np.empty((taps, width), np.float32)
            best = np.full(width, -np.inf, np.float32)
            for a in range(DIAMETER):
                for b in range(DIAMETER):
                    dots = logits[a * DIAMETER + b]
                    dots[:] = 0.0
                    for c in range(0, dim, 4):
                        for j in range(width):  # all reads from one array: one aliasing check, vectorised
                            m = j + RADIUS
                            dots[j] = (dots[j] + keys[n, c, i + a, j + b] * keys[n, c, i + RADIUS, m]
                                       + keys[n, c + 1, i + a, j + b] * keys[n, c + 1, i + RADIUS, m]
                                       + keys[n, c + 2, i + a, j + b] * keys[n, c + 2, i + RADIUS, m]
                                       + keys[n, c + 3, i + a, j + b] * keys[n, c + 3, i + RADIUS, m])
                    for j in range(width):
                        logit = temperature * dots[j]
                        dots[j] = logit
                        best[j] = logit if logit > best[j] else best[j]
            total = np.zeros(width, np.float32)
            powers = np.empty(width, np.int32)
            scale = powers.view(np.float32)
            for t in range(taps):
                # exp(line - best) for arguments <= 0: Cephes' expf (EXP_POLYNOMIAL), 2^k through the float bits
                # in ``powers`` (``scale`` is its float32 view); underflow gives 0, NaN stays NaN
                line = logits[t]
                for j in range(width):
                    argument = line[j] - best[j]
                    x = max(argument, np.float32(EXP_MIN))
                    k = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
                    r = x - k * np.float32(EXP_C1)
                    r = r - k * np.float32(EXP_C2)
                    p = np.float32(EXP_POLYNOMIAL[0])
                    p = p * r + np.float32(EXP_POLYNOMIAL[1])
                    p = p * r + np.float32(EXP_POLYNOMIAL[2])
                    p = p * r + np.float32(EXP_POLYNOMIAL[3])
                    p = p * r + np.float32(EXP_POLYNOMIAL[4])
                    p = p * r + np.float32(EXP_POLYNOMIAL[5])
                    powers[j] = (np.int32(k) + 127) << 23
                    value = (p * r * r + r + np.float32(1.0)) * scale[j]
                    if argument < np.float32(EXP_MIN):
                        value = np.float32(0.0)
                    line[j] = argument if argument != argument else value
                for j in range(width):
                    total[j] += line[j]
            norm = np.zeros(width, np.float32)
            for t in range(taps):
                line = logits[t]
                weight = spatial[t]
                for j in range(width):
                    line[j] = line[j] / total[j] * weight
                    norm[j] += line[j]
            for j in range(width):
                norm[j] = max(norm[j], np.float32(1e-7))
            for j in range(width):
                target = out[n, i, j]
                for t in range(taps):
                    target[t] = logits[t, j] / norm[j]

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


_KERNEL_COMPILERS = {"adaptive_conv": _compile_adaptive_conv, "resample_cols": _compile_resample_cols,
                     "resample_rows": _compile_resample_rows, "range_keys": _compile_range_keys,
                     "range_kernel": _compile_range_kernel, "cosine_head": _compile_cosine_head}


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
    if kernel.shape[3] != DIAMETER ** 2:
        raise ValueError(f"the compiled adaptive convolution takes {DIAMETER}x{DIAMETER} kernels, not "
                         f"{kernel.shape[3]} taps")
    out = np.empty((*kernel.shape[:3], padded.shape[3]), np.float32)
    _numba_kernels()["adaptive_conv"](np.ascontiguousarray(padded, np.float32),
                                      np.ascontiguousarray(kernel, np.float32), out)
    return out


def reflect_border(padded: np.ndarray, radius: int) -> None:
    """Fill the ``radius`` wide border of (N, H+2r, W+2r, C) from its interior as ``np.pad(mode="reflect")`` does."""
    height, width = padded.shape[1] - 2 * radius, padded.shape[2] - 2 * radius
    rows = slice(radius, radius + height)
    padded[:, rows, :radius] = padded[:, rows, 2 * radius:radius:-1]
    padded[:, rows, radius + width:] = padded[:, rows, radius + width - 2:width - 2:-1]
    padded[:, :radius] = padded[:, 2 * radius:radius:-1]
    padded[:, radius + height:] = padded[:, radius + height - 2:height - 2:-1]


def bicubic_resize_padded(array: np.ndarray, out_h: int, out_w: int, radius: int) -> np.ndarray:
    """``bicubic_resize`` written straight into the interior of a reflect-padded (N, H+2r, W+2r, C) array (one pass
    over the largest tensor fewer than resizing, then padding)."""
    in_h, in_w = array.shape[1:3]
    rows, wy = bicubic_taps(out_h, in_h, in_h / out_h)
    cols, wx = bicubic_taps(out_w, in_w, in_w / out_w)
    kernels = _numba_kernels()
    array = np.ascontiguousarray(array, np.float32)
    horizontal = np.empty((*array.shape[:2], out_w, array.shape[3]), np.float32)
    kernels["resample_cols"](array, cols, wx, horizontal)
    padded = np.empty((array.shape[0], out_h + 2 * radius, out_w + 2 * radius, array.shape[3]), np.float32)
    kernels["resample_rows"](horizontal, rows, wy, padded, radius)
    reflect_border(padded, radius)
    return padded


def apply_stage_kernels(features: np.ndarray, kernels: list[np.ndarray], radius: int = RADIUS) -> np.ndarray:
    """Run the 4 upsampling stages on channels-last features (N, h, w, C) with kernels [(N, 2^k h, 2^k w, d*d)]."""
    x = np.ascontiguousarray(features, np.float32)
    for kernel in kernels:
        height, width = kernel.shape[1:3]
        x = adaptive_conv_channels_last(bicubic_resize_padded(x, height, width, radius), kernel)
    return x


def _spatial_kernel(sigma: np.ndarray, diameter: int) -> np.ndarray:
    offsets = np.linspace(-1, 1, diameter, dtype=np.float32)
    squared = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(-1)
    return np.exp(-squared / np.float32(2 * np.float32(sigma) ** 2)).astype(np.float32)


def normalised_range_kernel(guidance: np.ndarray, weights: dict[str, np.ndarray],
                            out: np.ndarray | None = None) -> np.ndarray:
    """A stage's filter before its learned correction, channels-last (N, H, W, d*d), from guidance (N, H, W, 3);
    written into ``out`` where given."""
    kernels = _numba_kernels()
    batch, height, width, _ = guidance.shape
    dim = weights["range_w1"].shape[0]
    if dim % 4:
        raise ValueError(f"the compiled range kernel takes keys in groups of 4 channels, not {dim}")
    keys = np.empty((batch, dim, height + 2 * RADIUS, width + 2 * RADIUS), np.float32)
    kernels["range_keys"](np.ascontiguousarray(guidance, np.float32),
                          *(np.ascontiguousarray(weights[name], np.float32)
                            for name in ("range_w0", "range_b0", "range_w1", "range_b1")), keys)
    temperature = np.float32(min(max(math.exp(float(weights["range_temp"])), 1e-4), 1e4))
    spatial = _spatial_kernel(weights["sigma_spatial"], DIAMETER)
    if out is None:
        out = np.empty((batch, height, width, spatial.shape[0]), np.float32)
    kernels["range_kernel"](keys, temperature, spatial, out)
    return out


def stage_kernels(image: np.ndarray, weights: dict[str, np.ndarray],
                  correct: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """The four stages' filters, channels-last, for a normalised image (N, 3, H, W).

    The guidance of stage k is the image average-pooled by 2^(3-k). The four stages' filters are written into one
    buffer, so that ``correct(filters, guidance)``, the learned correction (a BLAS-heavy MLP on the last axis, run by
    onnxruntime or torch), runs once on all pixels of the batch, as (P/4, 2, 2, d*d).
    """
    guidance = np.ascontiguousarray(image.transpose(0, 2, 3, 1), np.float32)
    n, height, width, _ = guidance.shape
    shapes = [(n, height >> (3 - k), width >> (3 - k)) for k in range(4)]
    sizes = [math.prod(shape) for shape in shapes]
    taps = DIAMETER ** 2
    combined = np.empty((sum(sizes), taps), np.float32)
    pooled_all = np.empty((sum(sizes), 3), np.float32)
    start = 0
    for (_, h, w), size in zip(shapes, sizes, strict=True):
        factor = height // h
        pooled = guidance.reshape(n, h, factor, w, factor, 3).mean(axis=(2, 4), dtype=np.float32)
        pooled_all[start:start + size] = pooled.reshape(size, 3)
        normalised_range_kernel(pooled, weights, combined[start:start + size].reshape(n, h, w, taps))
        start += size
    quads = sum(sizes) // 4
    corrected = correct(combined.reshape(quads, 2, 2, taps), pooled_all.reshape(quads, 2, 2, 3))
    corrected = np.ascontiguousarray(corrected, np.float32).reshape(-1, taps)
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(corrected[start:start + size].reshape(*shape, taps))
        start += size
    return out
