"""The torch model's pieces against direct formulas computed in the test."""

import numpy as np
import pytest
import torch
from open_clip.tokenizer import tokenize
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from segearth_qgis.core import load_model_from_checkpoints
from segearth_qgis.core.method.torch_model import build_clip, modified_attention


def direct_attention(attn, x, variant):
    """Per batch item and head, with explicit softmaxes; float64."""
    w, b = attn.in_proj_weight.double(), attn.in_proj_bias.double()
    heads = attn.num_heads
    out = torch.zeros_like(x)
    width = x.shape[-1]
    hd = width // heads
    for n in range(x.shape[0]):
        q, k, v = (x[n] @ w.T + b).split(width, dim=-1)
        per_head = []
        for h in range(heads):
            qh, kh, vh = (t[:, h * hd:(h + 1) * hd] for t in (q, k, v))
            def sm(a, c):
                return torch.softmax(a @ c.T / hd ** 0.5, dim=-1)
            attn_matrix = {"SegEarth": sm(qh, qh) + sm(kh, kh) + sm(vh, vh), "SCLIP": sm(qh, qh) + sm(kh, kh),
                           "ClearCLIP": sm(qh, qh), "vanilla": sm(qh, kh)}[variant]
            per_head.append(attn_matrix @ vh)
        out[n] = torch.cat(per_head, dim=-1) @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()
    return out


@pytest.mark.parametrize("variant", ["SegEarth", "SCLIP", "ClearCLIP", "vanilla"])
def test_modified_attention_matches_direct_formula(tiny_model, variant):
    attn = tiny_model.clip.visual.transformer.resblocks[-1].attn
    x = torch.randn(2, 5, attn.embed_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        attn_double = type(attn)(attn.embed_dim, attn.num_heads, batch_first=True).double()
        attn_double.load_state_dict({k: v.double() for k, v in attn.state_dict().items()})
        ours = modified_attention(attn_double, x, variant)
        expected = direct_attention(attn_double, x, variant)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_vanilla_attention_equals_torch_multihead_attention(tiny_model):
    attn = tiny_model.clip.visual.transformer.resblocks[0].attn
    x = torch.randn(3, 7, attn.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(modified_attention(attn, x, "vanilla"), attn(x, x, x, need_weights=False)[0],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("last_n", [1, 2])
def test_encode_windows_follows_the_modified_last_blocks(tiny_checkpoints, last_n):
    """Blocks before the last n run as usual; each of the last n adds its residual-free SCLIP attention output."""
    model = load_model_from_checkpoints(**tiny_checkpoints, attention="SCLIP", last_n=last_n)
    visual = model.clip.visual
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cls, patches = model.encode_windows(x)
        tokens = visual.conv1(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([visual.class_embedding.expand(2, 1, -1), tokens], 1) + visual.positional_embedding
        tokens = visual.ln_pre(tokens)
        blocks = list(visual.transformer.resblocks)
        for block in blocks[:-last_n]:
            tokens = block(tokens)
        summed = 0
        for block in blocks[-last_n:]:
            summed = summed + direct_attention(block.attn, block.ln_1(tokens).double(), "SCLIP").float()
            tokens = block(tokens)
        expected = visual.ln_post(summed) @ visual.proj
    assert cls.shape == (2, model.embed_dim) and patches.shape == (2, model.embed_dim, 14, 14)
    torch.testing.assert_close(cls, expected[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1:].transpose(1, 2).reshape(2, -1, 14, 14), rtol=1e-4, atol=1e-5)


def test_gba_logits_from_normalised_features(tiny_checkpoints):
    """Without an upsampler: <p/|p|, t> - lambda <c/|c|, t> on the patch grid."""
    model = load_model_from_checkpoints(**{**tiny_checkpoints, "upsampler": None})
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    text = rng.standard_normal((3, model.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    with torch.no_grad():
        cls, patches = (t.numpy() for t in model.encode_windows(torch.from_numpy(windows)))
    p = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    c = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    expected = np.einsum("bdhw,qd->bqhw", p, text) - 0.3 * (c @ text.T)[:, :, None, None]
    logits = model.window_logits(windows, text, 0.3)
    assert logits.shape == (2, 3, 14, 14) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.window_logits(windows, text, 0.0), np.einsum("bdhw,qd->bqhw", p, text),
                               rtol=1e-5, atol=1e-6)


def test_text_features_average_80_normalised_prompts(tiny_model):
    queries = ["building", "water"]
    features = tiny_model.text_features(queries)
    assert features.shape == (2, tiny_model.embed_dim) and features.dtype == np.float32
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    for row, query in zip(features, queries, strict=True):
        with torch.no_grad():
            prompts = [tiny_model.clip.encode_text(tokenize([t(query)]))[0].double() for t in OPENAI_IMAGENET_TEMPLATES]
        mean = torch.stack([p / p.norm() for p in prompts]).mean(0)
        np.testing.assert_allclose(row, (mean / mean.norm()).numpy(), rtol=1e-5, atol=1e-6)
    assert tiny_model.text_features(queries) is features


def test_positional_embedding_interpolation_for_other_grids(tiny_model):
    pos = tiny_model.clip.visual.positional_embedding
    assert tiny_model.positional_embedding(14, 14) is pos
    grown = tiny_model.positional_embedding(28, 20)
    assert grown.shape == (28 * 20 + 1, pos.shape[1])
    torch.testing.assert_close(grown[0], pos[0])
    grid = pos[1:].reshape(14, 14, -1)
    assert torch.allclose(grown[1:].reshape(28, 20, -1).mean((0, 1)), grid.mean((0, 1)), atol=0.05)


def test_loading_checks_architecture_and_weights(tiny_checkpoints, tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        build_clip("ViT-Nope-99", True)
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        load_model_from_checkpoints(tiny_checkpoints["clip"], None, arch="ViT-B-16")
    with pytest.raises(ValueError, match="attention must be one of"):
        load_model_from_checkpoints(**tiny_checkpoints, attention="SegEarth-2")
    with pytest.raises(FileNotFoundError):
        load_model_from_checkpoints(tmp_path / "none.pt", None, arch=tiny_checkpoints["arch"])


def test_pickles_that_run_code_are_refused(tiny_checkpoints, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(ValueError, match="weights_only"):
        load_model_from_checkpoints(path, None, arch=tiny_checkpoints["arch"])


def test_safetensors_and_module_prefix_load(tiny_checkpoints, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(tiny_checkpoints["clip"], weights_only=True)
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    model = load_model_from_checkpoints(tmp_path / "clip.safetensors", None, arch=tiny_checkpoints["arch"])
    assert torch.equal(model.clip.visual.proj, state["visual.proj"])


def test_vit_b16_sized_model_runs_a_window():
    """The full ViT-B/16 shape (12 blocks, 12 heads, 512-d) with SimFeatUp at 512 channels, on random weights."""
    from segearth_qgis.core import JBUOne, SegEarthModel, Vocabulary, segment_image

    torch.manual_seed(0)
    model = SegEarthModel(build_clip("ViT-B-16", quick_gelu=True), JBUOne(512), attention="SegEarth", last_n=1)
    assert (model.patch_size, model.embed_dim, len(model.clip.visual.transformer.resblocks)) == (16, 512, 12)
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    res = segment_image(model, rgb, Vocabulary.parse("background\nbuilding,roof"), resize_longer_side=None)
    assert res.logits.shape == (3, 224, 224) and np.isfinite(res.logits).all()
    assert np.abs(res.logits).max() <= 1.3 + 1e-5  # cosines (|.| <= 1) minus 0.3 times a cosine
