"""SimFeatUp's 11x11 adaptive convolution as one fused CUDA kernel (numba's CUDA target): each output reads its
neighbourhood once, where torch runs it as 121 whole-tensor multiply-adds that each read and write the full tensor.

numba compiles the kernel at run time through NVVM, on torch's CUDA tensors through ``__cuda_array_interface__`` (no
copies) and on torch's current stream. Where numba or its CUDA target cannot run, ``cuda_problem`` says why and the
torch backend keeps the 121 slices (``simfeatup.adaptive_conv``), which the runtime line reports.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .simfeatup_cpu import DIAMETER

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
    grid = (-(-width // BLOCK[0]), -(-height // BLOCK[1]), batch * channels)
    adaptive_conv[grid, BLOCK, stream](padded, kernel, out)


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
