"""The fused CUDA adaptive convolution: its kernel in numba's CUDA simulator on the CPU (where no GPU is lent) against
the tap sum, and the torch backend keeping its 121 slices where the kernel cannot run."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segearth_qgis.core.method import simfeatup_cuda
from segearth_qgis.core.method.simfeatup import adaptive_conv

ROOT = Path(__file__).resolve().parents[3]
SIMULATED = textwrap.dedent("""
    import numpy as np
    from numba import cuda
    from segearth_qgis.core.method import simfeatup_cuda

    assert simfeatup_cuda.cuda_problem() is None
    rng = np.random.default_rng(0)
    for batch, channels, height, width in [(2, 3, 5, 7), (1, 2, 9, 35)]:  # 35 columns: two blocks, one partial
        padded = rng.standard_normal((batch, channels, height + 10, width + 10)).astype(np.float32)
        kernel = rng.random((batch, 121, height, width)).astype(np.float32)
        out = cuda.device_array((batch, channels, height, width), np.float32)
        simfeatup_cuda.launch_adaptive_conv(cuda.to_device(padded), cuda.to_device(kernel), out)
        expected = np.zeros((batch, channels, height, width))
        for a in range(11):
            for b in range(11):
                expected += kernel[:, None, a * 11 + b].astype(np.float64) * padded[:, :, a:a + height, b:b + width]
        np.testing.assert_allclose(out.copy_to_host(), expected, rtol=1e-5, atol=1e-5)
    print("simulated kernel ok")
""")
SIMULATED_CHAIN = textwrap.dedent("""
    import numpy as np
    from numba import cuda
    from segearth_qgis.core.method import simfeatup_cpu, simfeatup_cuda

    rng = np.random.default_rng(1)
    grid = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)            # (N, h, w, r) channels-last, as the head
    kernels = [rng.random((2, 6, 8, 121)).astype(np.float32) / 60, rng.random((2, 12, 16, 121)).astype(np.float32) / 60]
    device = simfeatup_cuda.upsample_on_device(grid, [cuda.to_device(np.ascontiguousarray(k.transpose(0, 3, 1, 2)))
                                                      for k in kernels])
    host = simfeatup_cpu.apply_stage_kernels(grid, kernels)
    np.testing.assert_allclose(device.copy_to_host().transpose(0, 2, 3, 1), host, rtol=1e-5, atol=1e-6)
    offsets, text, gba = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5), (2, 3, 5), (2, 3)))
    logits = simfeatup_cuda.head_on_device(device, offsets, text, gba)
    expected = simfeatup_cpu.cosine_head(host.reshape(2, -1, 5), offsets, text, gba).reshape(2, 3, 12, 16)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    print("simulated chain ok")
""")


def test_the_fused_kernel_equals_the_tap_sum_in_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", SIMULATED], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "simulated kernel ok" in run.stdout


def test_the_device_stages_and_head_equal_the_cpu_path_in_the_cuda_simulator():
    """Bicubic into the padded buffer, the fused convolution and the head, chained on the device as the ONNX backend
    runs them on CUDA, against the compiled CPU path (two stages keep the simulator quick)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", SIMULATED_CHAIN], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "simulated chain ok" in run.stdout


def test_without_a_usable_cuda_target_the_reason_names_the_install():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the fused kernel is exercised by tests/core/runtime/test_cuda.py")
    assert "numba" in simfeatup_cuda.cuda_problem()


def test_cpu_tensors_keep_the_torch_slices():
    torch.manual_seed(0)
    padded, kernel = torch.randn(1, 4, 16, 18), torch.rand(1, 121, 6, 8)
    expected = sum(kernel[:, None, a * 11 + b] * padded[:, :, a:a + 6, b:b + 8] for a in range(11) for b in range(11))
    torch.testing.assert_close(adaptive_conv(padded, kernel, 11), expected, rtol=1e-5, atol=1e-5)
