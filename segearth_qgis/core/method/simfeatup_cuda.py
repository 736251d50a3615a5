"""SimFeatUp on the GPU as fused CUDA kernels (numba's CUDA target): the 11x11 adaptive convolution reads each
output's neighbourhood once, where torch and onnxruntime run it as 121 whole-tensor multiply-adds that each read and
write the full tensor; bicubic x2 writes straight into the reflect-padded buffer; the head runs beside the features.

numba compiles the kernels at run time through NVVM. The torch backend passes its CUDA tensors through
``__cuda_array_interface__`` (no copies) on torch's current stream; the ONNX backend keeps the bundle's kernel graph
outputs on the device and runs the stages and the head here, so only the Q logit channels come back to the host.
Where numba or its CUDA target cannot run, ``cuda_problem`` says why and the backends keep their graphs or slices,
which the runtime line reports.
"""

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from .simfeatup_cpu import DIAMETER, RADIUS, bicubic_taps

BLOCK = (32, 8, 1)  # threads per block: 32 columns (one warp reads a row segment coalesced) by 8 rows
_STATE = {}


def cuda_problem() -> str | None:
    """Why the fused kernel cannot run here (numba missing, or its CUDA target unusable), or None."""
    if "problem" not in _STATE:
        try:
            from numba import cuda
        except ImportError:
            _STATE["problem"] = "numba is not installed (pip install numba)"
        else:
            _STATE["problem"] = None if cuda.is_available() else "numba's CUDA target finds no usable GPU or NVVM " \
                "(pip install numba-cuda[cu13] with the NVIDIA driver)"
    return _STATE["problem"]


def launch_adaptive_conv(padded: Any, kernel: Any, out: Any, stream: Any = 0) -> None:
    """The fused kernel on device arrays (numba's, or anything with ``__cuda_array_interface__``)."""
    from .simfeatup_cuda_kernel import adaptive_conv

    batch, channels, height, width = out.shape
    adaptive_conv[_blocks(width, height, batch * channels), BLOCK, stream](padded, kernel, out)


def fused_adaptive_conv(padded: "torch.Tensor", kernel: "torch.Tensor") -> "torch.Tensor":
    """``simfeatup.adaptive_conv`` for CUDA tensors in one kernel, on torch's current stream; the result has the
    features' dtype (sums in float32, also under fp16 autocast)."""
    import torch
    from numba import cuda

    padded, kernel = padded.contiguous(), kernel.contiguous()
    if kernel.shape[1] != DIAMETER ** 2:
        raise ValueError(f"the fused adaptive convolution takes {DIAMETER}x{DIAMETER} kernels, not {kernel.shape[1]}")
    out = torch.empty(padded.shape[0], padded.shape[1], *kernel.shape[2:], dtype=torch.float32,
                      device=padded.device)
    stream = cuda.external_stream(torch.cuda.current_stream(padded.device).cuda_stream)
    launch_adaptive_conv(cuda.as_cuda_array(padded), cuda.as_cuda_array(kernel), cuda.as_cuda_array(out), stream)
    return out.to(padded.dtype)


def _blocks(width: int, height: int, planes: int) -> tuple[int, int, int]:
    return -(-width // BLOCK[0]), -(-height // BLOCK[1]), planes


def upsample_on_device(grid: np.ndarray, kernels: list[Any], stream: Any = 0) -> Any:
    """SimFeatUp's four stages on the device: channels-last host features (N, h, w, r) and the stages' kernels as
    device arrays (N, d*d, 2^k h, 2^k w) to planar device features (N, r, 16h, 16w)."""
    from numba import cuda

    from .simfeatup_cuda_kernel import bicubic_padded

    x = cuda.to_device(np.ascontiguousarray(grid.transpose(0, 3, 1, 2), np.float32), stream=stream)
    batch, rank = x.shape[:2]
    for kernel in kernels:
        (in_h, in_w), (height, width) = x.shape[2:], kernel.shape[2:]
        rows, row_weights = bicubic_taps(height, in_h, in_h / height)
        cols, col_weights = bicubic_taps(width, in_w, in_w / width)
        taps = [cuda.to_device(np.ascontiguousarray(a), stream=stream) for a in (rows, row_weights, cols, col_weights)]
        padded = cuda.device_array((batch, rank, height + 2 * RADIUS, width + 2 * RADIUS), np.float32, stream=stream)
        bicubic_padded[_blocks(width + 2 * RADIUS, height + 2 * RADIUS, batch * rank), BLOCK, stream](
            x, *taps, RADIUS, padded)
        x = cuda.device_array((batch, rank, height, width), np.float32, stream=stream)
        launch_adaptive_conv(padded, kernel, x, stream)
    return x


def head_on_device(features: Any, offsets: np.ndarray, text: np.ndarray, gba: np.ndarray,
                   stream: Any = 0) -> np.ndarray:
    """GBA cosine logits (N, Q, H, W) on the host from planar device features (N, r, H, W); only they are copied."""
    from numba import cuda

    from .simfeatup_cuda_kernel import cosine_head

    batch, rank, height, width = features.shape
    flat = features.reshape(batch, rank, height * width)
    arrays = [cuda.to_device(np.ascontiguousarray(a, np.float32), stream=stream) for a in (offsets, text, gba)]
    out = cuda.device_array((batch, text.shape[1], height * width), np.float32, stream=stream)
    cosine_head[(-(-height * width // 128), batch), (128, 1), stream](flat, *arrays, out)
    return out.copy_to_host(stream=stream).reshape(batch, text.shape[1], height, width)


def ort_device_array(value: Any) -> Any:
    """An onnxruntime OrtValue on the GPU as a numba device array over the same memory (kept alive by it)."""
    from numba import cuda

    interface = {"shape": tuple(value.shape()), "strides": None, "typestr": "<f4",
                 "data": (value.data_ptr(), False), "version": 3}
    return cuda.from_cuda_array_interface(interface, owner=value, sync=False)
