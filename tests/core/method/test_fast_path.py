"""The exact reordering of SimFeatUp and its torch-free data path, against the official order of operations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_qgis.core.method import simfeatup_cpu
from segearth_qgis.core.method.simfeatup import JBUOne, apply_stage_kernels, weights_from_upsampler


@pytest.mark.parametrize("src,dst", [((7, 9), (14, 18)), ((14, 14), (28, 28)), ((3, 5), (6, 10))])
def test_bicubic_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, *src, 5)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), dst, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(simfeatup_cpu.bicubic_resize(x, *dst), expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_bicubic_with_a_scale_factor_matches_torch():
    """The positional-embedding case: torch is given scale factors (grid + 0.1) / 14, not a size."""
    x = np.random.default_rng(1).standard_normal((1, 14, 14, 6)).astype(np.float32)
    factors = (28.1 / 14, 21.1 / 14)
    expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=factors, mode="bicubic")
    ours = simfeatup_cpu.bicubic_resize(x, 28, 21, 1 / factors[0], 1 / factors[1])
    np.testing.assert_allclose(ours, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_compiled_data_path_equals_torch():
    if not simfeatup_cpu.numba_available():
        pytest.skip("numba is not installed here: the backends keep SimFeatUp in their graphs instead")
    torch.manual_seed(0)
    ups = JBUOne(8).eval()
    image = torch.randn(2, 3, 96, 64)
    source = torch.randn(2, 8, 6, 4)
    with torch.no_grad():
        kernels = ups.stage_kernels(image)
        expected = apply_stage_kernels(source, kernels)
    ours = simfeatup_cpu.apply_stage_kernels(source.permute(0, 2, 3, 1).numpy(),
                                             [k.permute(0, 2, 3, 1).numpy() for k in kernels])
    np.testing.assert_allclose(ours, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_stage_kernels_and_data_path_reproduce_the_official_forward():
    torch.manual_seed(1)
    ups = JBUOne(8).eval()
    with torch.no_grad():
        ups.up.range_temp.fill_(0.7)
        image, source = torch.randn(1, 3, 64, 80), torch.randn(1, 8, 4, 5)
        official = ups(source, image)
        weight, bias = ups.projection()
        staged = apply_stage_kernels(source, ups.stage_kernels(image))
        rebuilt = staged + 0.1 * (torch.einsum("oc,bchw->bohw", weight, staged) + bias[None, :, None, None])
    torch.testing.assert_close(rebuilt, official, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [224, 64])
def test_reduced_channel_logits_equal_the_official_order(tiny_model, size):
    """At 224 the tiny model keeps all 32 channels; at 64 (16 patches) the basis has 17 columns."""
    rng = np.random.default_rng(size)
    windows = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    text = tiny_model.text_features(["background", "building", "water"])
    fast = tiny_model.window_logits(windows, text, 0.3)
    with torch.no_grad():
        official = tiny_model.reference_order_logits(torch.from_numpy(windows), torch.from_numpy(text), 0.3).numpy()
    assert fast.shape == official.shape == (2, 3, size, size)
    np.testing.assert_allclose(fast, official, atol=2e-6)


def test_compiled_stage_kernels_equal_torch():
    if not simfeatup_cpu.numba_available():
        pytest.skip("numba is not installed here: the kernels come from torch or onnxruntime instead")
    torch.manual_seed(2)
    ups = JBUOne(8).eval()
    with torch.no_grad():
        ups.up.range_temp.fill_(1.3)
        ups.up.sigma_spatial.fill_(0.6)
        image = torch.randn(2, 3, 96, 64)
        expected = ups.stage_kernels(image)
    def correct(combined, guidance):
        with torch.no_grad():
            return ups.up.corrected_kernel_channels_last(torch.from_numpy(combined), torch.from_numpy(guidance)).numpy()

    ours = simfeatup_cpu.stage_kernels(image.numpy(), weights_from_upsampler(ups), correct)
    for k, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert a.shape == (2, 12 * 2 ** k, 8 * 2 ** k, 121)
        # float32 sums and exp in another order: one element in 1.5 M differs by 2.3e-6 on some CPUs (2 vCPU here)
        np.testing.assert_allclose(a, b.permute(0, 2, 3, 1).numpy(), atol=4e-6)


@pytest.mark.parametrize("compiled", [True, False])
def test_cosine_head_equals_an_explicit_computation(compiled, monkeypatch):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 40, 9)).astype(np.float32)
    offsets = rng.standard_normal((2, 9)).astype(np.float32)
    text = rng.standard_normal((2, 4, 9)).astype(np.float32)
    gba = rng.standard_normal((2, 4)).astype(np.float32)
    if not compiled:
        monkeypatch.setitem(simfeatup_cpu._NUMBA, "kernels", None)
    expected = np.empty((2, 4, 40))
    for n in range(2):
        for p in range(40):
            v = features[n, p].astype(np.float64) + offsets[n]
            expected[n, :, p] = text[n].astype(np.float64) @ v / np.sqrt(v @ v) - gba[n]
    np.testing.assert_allclose(simfeatup_cpu.cosine_head(features, offsets, text, gba), expected, atol=2e-5)
