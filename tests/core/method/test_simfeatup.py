"""SimFeatUp's pieces against independent formulas, and its checkpoint format."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_qgis.core.method.simfeatup import JBUOne, adaptive_conv, load_simfeatup, neighbourhood_dot


def unfold_adaptive_conv(padded, kernel_bhwab):
    """The unfold + einsum formula of the official ``adaptive_conv_py_simple``, written out here."""
    b, c = padded.shape[:2]
    _, h, w, d, _ = kernel_bhwab.shape
    patches = F.unfold(padded, d).view(b, c, d * d, h, w)
    return torch.einsum("bhwf,bcfhw->bchw", kernel_bhwab.reshape(b, h, w, d * d), patches)


@pytest.mark.parametrize("diameter,size", [(11, (6, 9)), (3, (4, 4)), (7, (5, 12))])
def test_adaptive_conv_equals_unfold_formula(diameter, size):
    gen = torch.Generator().manual_seed(diameter)
    h, w = size
    padded = torch.randn(2, 5, h + diameter - 1, w + diameter - 1, generator=gen, dtype=torch.float64)
    kernel = torch.randn(2, h, w, diameter, diameter, generator=gen, dtype=torch.float64)
    ours = adaptive_conv(padded, kernel.permute(0, 3, 4, 1, 2).reshape(2, diameter * diameter, h, w), diameter)
    torch.testing.assert_close(ours, unfold_adaptive_conv(padded, kernel), rtol=1e-12, atol=1e-12)
    assert ours.shape == (2, 5, h, w)


def test_neighbourhood_dot_equals_unfold_formula():
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 4, 7, 8, generator=gen, dtype=torch.float64)
    padded = F.pad(keys, [2] * 4, mode="reflect")
    queries = F.unfold(padded, 5).reshape(1, 4, 25, 7, 8)
    expected = torch.einsum("bcphw,bchw->bphw", queries, keys)
    torch.testing.assert_close(neighbourhood_dot(padded, keys), expected, rtol=1e-12, atol=1e-12)


def test_jbuone_stage_matches_a_direct_bilateral_computation():
    """One stage: softmax range kernel times gaussian spatial kernel, normalised, corrected, applied to bicubic x2."""
    torch.manual_seed(0)
    ups = JBUOne(6).double().eval()
    stage = ups.up
    with torch.no_grad():
        stage.range_temp.fill_(0.3)
        stage.sigma_spatial.fill_(0.7)
    source = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    guidance = torch.randn(1, 3, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        out = stage(source, guidance).numpy()
        keys = stage.range_proj(guidance).numpy()[0]
        up = F.interpolate(source, (8, 10), mode="bicubic", align_corners=False)
        up_pad = F.pad(up, [5] * 4, mode="reflect").numpy()[0]
        keys_pad = F.pad(torch.from_numpy(keys)[None], [5] * 4, mode="reflect").numpy()[0]
        fixup = stage.fixup_proj
    offsets = np.linspace(-1, 1, 11)
    spatial = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 0.7 ** 2)).reshape(-1)
    kernels = np.zeros((121, 8, 10))
    for i in range(8):
        for j in range(10):
            window = keys_pad[:, i:i + 11, j:j + 11].reshape(keys.shape[0], -1)
            logits = np.exp(0.3) * (window * keys[:, i, j:j + 1]).sum(0)
            range_k = np.exp(logits - logits.max())
            range_k /= range_k.sum()
            k = range_k * spatial
            kernels[:, i, j] = k / k.sum()
    with torch.no_grad():
        correction = fixup(torch.cat([torch.from_numpy(kernels)[None], guidance], 1)).numpy()[0]
    kernels = kernels + 0.1 * correction
    expected = np.zeros((6, 8, 10))
    for i in range(8):
        for j in range(10):
            window = up_pad[:, i:i + 11, j:j + 11].reshape(6, -1)
            expected[:, i, j] = window @ kernels[:, i, j]
    # The module builds its spatial offsets in float32, as the official code does; hence 1e-6, not 1e-12.
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)


def test_jbuone_upsamples_by_16_and_refuses_tiny_grids():
    ups = JBUOne(4).eval()
    with torch.no_grad():
        assert ups(torch.randn(2, 4, 3, 5), torch.randn(2, 3, 48, 80)).shape == (2, 4, 48, 80)
        with pytest.raises(ValueError, match="too small for SimFeatUp"):
            ups(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 32, 32))


def test_official_checkpoint_format_loads_strictly(tmp_path):
    torch.manual_seed(1)
    original = JBUOne(8)
    state = {f"upsampler.{k}": v for k, v in original.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 100}, tmp_path / "ups.ckpt")
    loaded = load_simfeatup(tmp_path / "ups.ckpt")
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not loaded.training
    del state["upsampler.up.range_temp"]
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="range_temp"):
        load_simfeatup(tmp_path / "broken.ckpt")
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="SimFeatUp checkpoint"):
        load_simfeatup(tmp_path / "other.ckpt")
