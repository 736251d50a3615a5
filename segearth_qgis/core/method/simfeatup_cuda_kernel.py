"""The fused adaptive convolution's CUDA kernel; its own module, imported only when it runs, because numba's CUDA
target (and its simulator, which the tests use) resolves ``cuda`` among the kernel's module globals."""

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
