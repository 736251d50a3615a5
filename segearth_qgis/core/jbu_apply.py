"""SimFeatUp's data path without torch: bicubic x2, reflect padding and the per-pixel 11x11 adaptive convolution.

The kernels depend on the guidance image only (computed by torch or onnxruntime); this applies them to features.
The adaptive convolution runs as a numba-compiled channels-last loop when numba is installed (about 20x faster on a
CPU than 121 whole-tensor multiply-adds) and as those multiply-adds in numpy otherwise; both sum the taps in the
same order as the official kernel.
"""

import os

import numpy as np

_CUBIC_A = -0.75  # torch's bicubic (Keys, a = -0.75)


def _cubic_weights(t):
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t`` (float32, like torch)."""
    t = t.astype(np.float32)
    a = np.float32(_CUBIC_A)

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far((1 - t) + 1)], axis=-1).astype(np.float32)


def _bicubic_taps(out_len, in_len, scale):
    """Source indices (out_len, 4) and weights for torch's bicubic with ``align_corners=False``; ``scale`` = in/out."""
    src = np.float32(scale) * (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    floor = np.floor(src)
    index = floor.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    return np.clip(index, 0, in_len - 1), _cubic_weights(src - floor)


def bicubic_resize(array, out_h, out_w, scale_h=None, scale_w=None):
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


def _adaptive_conv_numpy(padded, kernel):
    batch, taps, height, width = kernel.shape
    diameter = int(round(taps ** 0.5))
    out = np.zeros((batch, height, width, padded.shape[-1]), np.float32)
    for a in range(diameter):
        for b in range(diameter):
            out += padded[:, a:a + height, b:b + width, :] * kernel[:, a * diameter + b, :, :, None]
    return out


def _build_numba_kernels():
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "segearth-qgis", "numba"))
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, cache=True)
    def adaptive_conv(padded, kernel, out):
        batch, taps, height, width = kernel.shape
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
                        w = kernel[n, a * diameter + b, i, j]
                        src = padded[n, i + a, j + b]
                        for c in range(channels):
                            acc[c] += w * src[c]

    @numba.njit(parallel=True, cache=True)
    def resample_cols(src, index, weight, out):
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

    @numba.njit(parallel=True, cache=True)
    def resample_rows(src, index, weight, out):
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

    return {"adaptive_conv": adaptive_conv, "resample_cols": resample_cols, "resample_rows": resample_rows}


_NUMBA = {}


def _numba_kernels():
    """The compiled loops, or None where numba is not installed (compiled on first use, once per process)."""
    if "kernels" not in _NUMBA:
        _NUMBA["kernels"] = _build_numba_kernels()
    return _NUMBA["kernels"]


def numba_available():
    return _numba_kernels() is not None


def adaptive_conv_channels_last(padded, kernel, use_numba=True):
    """``out[n,i,j,c] = sum_{a,b} padded[n,i+a,j+b,c] * kernel[n,a*d+b,i,j]``; padded (N,H+2r,W+2r,C) float32."""
    padded = np.ascontiguousarray(padded, np.float32)
    kernel = np.ascontiguousarray(kernel, np.float32)
    if use_numba and numba_available():
        out = np.empty((kernel.shape[0], kernel.shape[2], kernel.shape[3], padded.shape[3]), np.float32)
        _numba_kernels()["adaptive_conv"](padded, kernel, out)
        return out
    return _adaptive_conv_numpy(padded, kernel)


def apply_stage_kernels(features, kernels, radius=5, use_numba=True):
    """Run the 4 upsampling stages on channels-last features (N, h, w, C) with kernels [(N, d*d, 2^k h, 2^k w)]."""
    x = np.ascontiguousarray(features, np.float32)
    for kernel in kernels:
        height, width = kernel.shape[2:]
        x = bicubic_resize(x, height, width)
        x = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
        x = adaptive_conv_channels_last(x, kernel, use_numba)
    return x
