"""Each compiled SimFeatUp loop against its unfused formula in float64, on odd sizes and windows smaller than 224."""

import math

import numpy as np
import pytest

from segearth_qgis.core.method import simfeatup_cpu

pytestmark = pytest.mark.skipif(not simfeatup_cpu.numba_available(),
                                reason="numba is not installed here: the backends keep SimFeatUp in their graphs")


def _weights(rng, key_scale=0.4, temperature=0.7, sigma=0.8):
    return {"range_w0": rng.standard_normal((32, 3)).astype(np.float32),
            "range_b0": rng.standard_normal(32).astype(np.float32),
            "range_w1": (key_scale * rng.standard_normal((32, 32))).astype(np.float32),
            "range_b1": (key_scale * rng.standard_normal(32)).astype(np.float32),
            "range_temp": np.float32(temperature), "sigma_spatial": np.float32(sigma)}


def _range_kernel_unfused(guidance, weights, dtype=np.float64):
    """The unfused formula in ``dtype``: keys (1x1, erf GELU, 1x1), reflect pad, dot products, softmax, spatial,
    normalise."""
    g = guidance.astype(dtype)
    weights = {name: np.asarray(value, dtype) for name, value in weights.items()}
    hidden = g @ weights["range_w0"].T + weights["range_b0"]
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf, otypes=[dtype])(hidden / dtype(math.sqrt(2))))
    keys = hidden @ weights["range_w1"].T + weights["range_b1"]
    n, h, w, _ = keys.shape
    padded = np.pad(keys, ((0, 0), (5, 5), (5, 5), (0, 0)), mode="reflect")
    dots = np.stack([np.einsum("nhwc,nhwc->nhw", padded[:, a:a + h, b:b + w], keys)
                     for a in range(11) for b in range(11)], axis=-1)
    logits = dtype(min(max(math.exp(float(weights["range_temp"])), 1e-4), 1e4)) * dots
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    offsets = np.linspace(-1, 1, 11, dtype=dtype)
    squared = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(-1)
    spatial = np.exp(-squared / (2 * weights["sigma_spatial"] ** 2))
    combined = soft * spatial
    return combined / np.maximum(combined.sum(-1, keepdims=True), dtype(1e-7))


def _assert_as_exact_as_float32(ours, guidance, weights):
    """Within 4x (plus a float32 ulp of 1) of the straightforward float32 formula's own error against float64: the
    softmax of large dot products amplifies any float32 rounding, the official code's included."""
    exact = _range_kernel_unfused(guidance, weights)
    float32_error = np.abs(_range_kernel_unfused(guidance, weights, np.float32) - exact).max()
    assert np.abs(ours - exact).max() <= 4 * float32_error + 1.2e-7


@pytest.mark.parametrize("shape", [(2, 7, 9), (1, 6, 13), (1, 28, 28)])
def test_range_kernel_equals_the_unfused_formula(shape):
    rng = np.random.default_rng(sum(shape))
    guidance = rng.standard_normal((*shape, 3)).astype(np.float32)
    weights = _weights(rng)
    ours = simfeatup_cpu.normalised_range_kernel(guidance, weights)
    assert ours.shape == (*shape, 121) and ours.dtype == np.float32
    _assert_as_exact_as_float32(ours, guidance, weights)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)


def test_range_kernel_underflow_is_zero_and_the_peak_exact():
    """A very peaked softmax: exp arguments far below -87 (float32 underflow) give 0 as float64 rounds them."""
    rng = np.random.default_rng(5)
    guidance = rng.standard_normal((1, 9, 11, 3)).astype(np.float32)
    weights = _weights(rng, key_scale=1.5, temperature=4.0)
    ours = simfeatup_cpu.normalised_range_kernel(guidance, weights)
    expected = _range_kernel_unfused(guidance, weights)
    assert (expected < 1e-38).any()
    _assert_as_exact_as_float32(ours, guidance, weights)
    assert np.all(ours[expected < 1e-38] < 1e-37)


def test_range_kernel_keeps_nan_where_the_official_code_has_it():
    rng = np.random.default_rng(6)
    guidance = rng.standard_normal((1, 12, 12, 3)).astype(np.float32)
    guidance[0, 6, 6, 1] = np.nan
    ours = simfeatup_cpu.normalised_range_kernel(guidance, _weights(rng))
    assert np.isnan(ours[0, 6, 6]).all()            # its own softmax
    assert np.isfinite(ours[0, 0, 0]).all()         # 11x11 neighbourhoods that do not reach it (nor its reflection)


@pytest.mark.parametrize("height,width,channels", [(5, 37, 13), (8, 8, 197), (3, 70, 4)])
def test_adaptive_conv_equals_the_tap_sum(height, width, channels):
    """Widths over and under the 32-column strips, a partial last strip, channel counts off the SIMD width."""
    rng = np.random.default_rng(height * width)
    padded = rng.standard_normal((2, height + 10, width + 10, channels)).astype(np.float32)
    kernel = rng.random((2, height, width, 121)).astype(np.float32)
    expected = np.zeros((2, height, width, channels))
    for a in range(11):
        for b in range(11):
            expected += kernel[..., a * 11 + b, None].astype(np.float64) * padded[:, a:a + height, b:b + width]
    np.testing.assert_allclose(simfeatup_cpu.adaptive_conv_channels_last(padded, kernel), expected, rtol=1e-5,
                               atol=1e-5)


def test_adaptive_conv_refuses_other_neighbourhoods():
    with pytest.raises(ValueError, match="11x11"):
        simfeatup_cpu.adaptive_conv_channels_last(np.zeros((1, 8, 8, 2), np.float32),
                                                  np.zeros((1, 4, 4, 25), np.float32))


@pytest.mark.parametrize("src,dst", [((7, 9), (14, 18)), ((3, 5), (6, 10)), ((14, 14), (28, 28))])
def test_bicubic_into_the_padded_array_equals_resize_then_pad(src, dst):
    x = np.random.default_rng(7).standard_normal((2, *src, 11)).astype(np.float32)
    expected = np.pad(simfeatup_cpu.bicubic_resize(x, *dst), ((0, 0), (5, 5), (5, 5), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(simfeatup_cpu.bicubic_resize_padded(x, *dst, 5), expected)
