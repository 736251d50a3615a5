"""The fused adaptive convolution's CUDA kernel; its own module, imported only when it runs, because numba's CUDA
target (and its simulator, which the tests use) resolves ``cuda`` among the kernel's module globals."""

import math
from typing import Any

import numba
from numba import cuda

from .simfeatup_cpu import DIAMETER


@cuda.jit
def adaptive_conv(padded: Any, kernel: Any, out: Any) -> None:
    """out[n,c,i,j] = sum_{a,b} kernel[n,a*d+b,i,j] * padded[n,c,i+a,j+b], taps in order, float32 sums: one thread per
    output; padded (N,C,H+2r,W+2r), kernel (N,d*d,H,W), out (N,C,H,W) float32."""
    j, i, plane = cuda.grid(3)
    batch, channels, height, width = out.shape
    if j >= width or i >= height or plane >= batch * channels:
        return
    n = plane // channels
    c = plane % channels
    acc = numba.float32(0.0)
    for a in range(DIAMETER):
        for b in range(DIAMETER):
            acc += numba.float32(kernel[n, a * DIAMETER + b, i, j]) * numba.float32(padded[n, c, i + a, j + b])
    out[n, c, i, j] = acc


@cuda.jit(device=True)
def _reflect(index: int, size: int) -> int:
    if index < 0:
        return -index
    if index >= size:
        return 2 * (size - 1) - index
    return index


@cuda.jit
def bicubic_padded(source: Any, rows: Any, row_weights: Any, cols: Any, col_weights: Any, radius: int,
                   out: Any) -> None:
    """torch's bicubic (align_corners=False) of planar source (N,C,h,w) into a reflect-padded (N,C,H+2r,W+2r): each
    border pixel is the resize at its reflected position, so padding costs no pass; 4 horizontal taps on 4 rows, then
    the vertical sum, as torch's CUDA kernel orders them. rows/cols (H|W, 4) clamped indices, weights alike."""
    x, y, plane = cuda.grid(3)
    padded_h, padded_w = out.shape[2], out.shape[3]
    channels = source.shape[1]
    if x >= padded_w or y >= padded_h or plane >= source.shape[0] * channels:
        return
    n = plane // channels
    c = plane % channels
    oy = _reflect(y - radius, rows.shape[0])
    ox = _reflect(x - radius, cols.shape[0])
    acc = numba.float32(0.0)
    for k in range(4):
        line = numba.float32(0.0)
        for m in range(4):
            line += source[n, c, rows[oy, k], cols[ox, m]] * col_weights[ox, m]
        acc += line * row_weights[oy, k]
    out[n, c, y, x] = acc


@cuda.jit
def cosine_head(features: Any, offsets: Any, text: Any, gba: Any, out: Any) -> None:
    """out[n,q,p] = <f + o, t_q> / |f + o| - gba[n,q] for planar features (N, r, P), offsets (N, r), text (N, Q, r):
    one thread per pixel, channel sums in order; only the Q logit channels leave the device."""
    p, n = cuda.grid(2)
    rank, pixels = features.shape[1], features.shape[2]
    if p >= pixels or n >= features.shape[0]:
        return
    square = numba.float32(0.0)
    for c in range(rank):
        v = features[n, c, p] + offsets[n, c]
        square += v * v
    norm = math.sqrt(square)
    for q in range(text.shape[1]):
        dot = numba.float32(0.0)
        for c in range(rank):
            dot += (features[n, c, p] + offsets[n, c]) * text[n, q, c]
        out[n, q, p] = dot / norm - gba[n, q]
