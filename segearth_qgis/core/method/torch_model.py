"""SegEarth-OV's model in torch: an open_clip CLIP whose last block(s) use self-self attention, plus SimFeatUp and GBA.

The forward pass has no data-dependent Python control flow (only shape-dependent), so it exports to ONNX as it is.
"""

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import tokenize
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from ..common.choices import ATTENTIONS
from . import simfeatup_cpu
from .checkpoints import load_state_dict
from .head import patch_grid_logits, upsampled_logits
from .simfeatup import JBUOne, apply_stage_kernels, load_simfeatup, weights_from_upsampler

# The reference's SegDataPreProcessor constants (CLIP's mean and std times 255, as written in its config).
REFERENCE_MEAN = (122.771, 116.746, 104.094)
REFERENCE_STD = (68.501, 66.632, 70.323)


def model_config(arch: str | os.PathLike) -> dict:
    """An open_clip model config: a model name such as ``ViT-B-16``, or the path of a config JSON in that format."""
    path = Path(arch)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        return json.loads(path.read_text())
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"unknown architecture {arch!r}: give an open_clip model name (e.g. ViT-B-16) "
                         "or the path of a model-config JSON")
    return config


def build_clip(arch: str | os.PathLike, quick_gelu: bool) -> CLIP:
    """An untrained open_clip CLIP of the given architecture, with QuickGELU (OpenAI weights) or exact GELU."""
    config = dict(model_config(arch))
    if config.get("custom_text") or "hf_model_name" in config.get("text_cfg", {}) or "multimodal_cfg" in config:
        raise ValueError(f"architecture {arch!r} is not a plain CLIP ViT; SegEarth-OV needs one (e.g. ViT-B-16)")
    config["quick_gelu"] = quick_gelu
    return CLIP(**config)


def _self_softmax(t: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax(t @ t.transpose(-1, -2) * scale, dim=-1)


def modified_attention(attn: nn.MultiheadAttention, x: torch.Tensor, variant: str) -> torch.Tensor:
    """The last block's attention without residual or FFN: SegEarth = qq+kk+vv, SCLIP = qq+kk, ClearCLIP = qq."""
    batch, tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    scale = head_dim ** -0.5
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
               for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    if variant == "SegEarth":
        weights = _self_softmax(q, scale) + _self_softmax(k, scale) + _self_softmax(v, scale)
    elif variant == "SCLIP":
        weights = _self_softmax(q, scale) + _self_softmax(k, scale)
    elif variant == "ClearCLIP":
        weights = _self_softmax(q, scale)
    else:
        weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, width)
    return attn.out_proj(out)


def half_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """fp16 autocast on CUDA for ``precision`` fp16 (matmuls and convolutions in half, softmax and norms in float32,
    as torch's autocast policy keeps them); float32 otherwise. The loader refuses fp16 anywhere but CUDA."""
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def strict_float32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """On CUDA, cuDNN without TF32 (torch allows it for convolutions by default; matmuls already run in float32)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


class SegEarthModel(nn.Module):
    """The torch backend: ``window_logits`` and ``text_features`` on numpy arrays, as ``segment_image`` expects."""

    def __init__(self, clip: CLIP, upsampler: JBUOne | None = None, attention: str = "SegEarth", last_n: int = 1,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        visual = clip.visual
        if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None or \
                getattr(visual, "final_ln_after_pool", False) or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("SegEarth-OV needs a CLIP ViT with class-token pooling (e.g. ViT-B-16)")
        if not 1 <= last_n <= len(visual.transformer.resblocks):
            raise ValueError(f"last_n must be between 1 and the number of blocks, got {last_n}")
        self.clip = clip
        self.upsampler = upsampler
        self.attention = attention
        self.last_n = last_n
        self.patch_size = visual.patch_size[0]
        self.embed_dim = visual.output_dim
        self.image_mean = REFERENCE_MEAN
        self.image_std = REFERENCE_STD
        self._text_cache = {}
        self._cpu_weights = None
        self.precision = "fp32"  # "fp16" on CUDA (set by the loader, which refuses it elsewhere)
        self.to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    def positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The reference's positional embedding: bicubically interpolated (its +0.1 rule) when the count differs."""
        pos = self.clip.visual.positional_embedding
        if grid_h * grid_w + 1 == pos.shape[0]:
            return pos
        side = int(round((pos.shape[0] - 1) ** 0.5))
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic")
        if grid.shape[2:] != (grid_h, grid_w):
            raise ValueError(f"positional embedding interpolation gave {tuple(grid.shape[2:])}, "
                             f"expected {(grid_h, grid_w)}")
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])

    def encode_windows(self, x: torch.Tensor, pos_grid: torch.Tensor | None = None,
                       with_image_embedding: bool = False) -> tuple[torch.Tensor, ...]:
        """Normalised windows (B, 3, H, W) to the modified block's CLS (B, D) and patch features (B, D, H/p, W/p).

        ``pos_grid`` (H/p, W/p, width) gives the patch positional embeddings explicitly (the ONNX graph takes them as
        an input); by default they come from ``positional_embedding``. ``with_image_embedding`` also returns CLIP's
        ordinary image embedding (B, D) from the same pass (all blocks unmodified, as ``clip.encode_image``).
        """
        visual = self.clip.visual
        tokens = visual.conv1(x)
        batch, width, grid_h, grid_w = tokens.shape
        if pos_grid is None:
            pos = self.positional_embedding(grid_h, grid_w)
        else:
            pos = torch.cat([visual.positional_embedding[:1], pos_grid.reshape(grid_h * grid_w, width)])
        tokens = tokens.reshape(batch, width, grid_h * grid_w).permute(0, 2, 1)
        cls = visual.class_embedding.reshape(1, 1, width).expand(batch, 1, width).to(tokens.dtype)
        tokens = torch.cat([cls, tokens], dim=1) + pos.to(tokens.dtype)
        tokens = visual.ln_pre(tokens)
        blocks = visual.transformer.resblocks
        for block in blocks[:len(blocks) - self.last_n]:
            tokens = block(tokens)
        output = 0
        modified = blocks[len(blocks) - self.last_n:]
        for i, block in enumerate(modified):
            output = output + modified_attention(block.attn, block.ln_1(tokens), self.attention)
            if i + 1 < len(modified) or with_image_embedding:
                tokens = block(tokens)
        output = visual.ln_post(output) @ visual.proj
        patches = output[:, 1:].permute(0, 2, 1).reshape(batch, -1, grid_h, grid_w)
        if with_image_embedding:
            return output[:, 0], patches, visual.ln_post(tokens[:, 0]) @ visual.proj
        return output[:, 0], patches

    def reference_order_logits(self, x: torch.Tensor, text_features: torch.Tensor, gba_lambda: float) -> torch.Tensor:
        """The official order of operations in torch: SimFeatUp at full channel count, then normalise and GBA.

        The yardstick of tests and benchmarks, and the CUDA path; on the CPU ``window_logits`` reorders it exactly.
        """
        with strict_float32(self.device), half_precision(self.device, self.precision):
            cls, features = self.encode_windows(x)
            if self.upsampler is not None:
                features = self.upsampler(features, x)
        features, cls = features.float(), cls.float()  # the head in float32, whatever the encoder ran in
        features = features / features.norm(dim=1, keepdim=True)
        cls = cls / cls.norm(dim=-1, keepdim=True)
        logits = torch.einsum("bdhw,qd->bqhw", features, text_features)
        return logits - gba_lambda * (cls @ text_features.T)[:, :, None, None]

    def reference_order_window_logits(self, windows: np.ndarray, text_features: np.ndarray,
                                      gba_lambda: float) -> np.ndarray:
        """``reference_order_logits`` on numpy windows and text features, returning numpy logits."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).to(self.device)
            text = torch.from_numpy(np.ascontiguousarray(text_features, np.float32)).to(self.device)
            return self.reference_order_logits(x, text, gba_lambda).cpu().numpy()

    def window_logits(self, windows: np.ndarray, text_features: np.ndarray, gba_lambda: float) -> np.ndarray:
        """GBA cosine logits (B, Q, h, w) for normalised windows: on the CPU through the exact reduced-channel
        SimFeatUp; on CUDA in the official order, which the GPU runs faster than the host-side reordering."""
        if self.device.type == "cuda":
            return self.reference_order_window_logits(windows, text_features, gba_lambda)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).to(self.device)
            cls, patches = (t.float().cpu().numpy() for t in self.encode_windows(x))
            if self.upsampler is None:
                return patch_grid_logits(cls, patches, text_features, gba_lambda)
            weight, bias = (t.double().cpu().numpy() for t in self.upsampler.projection())
            if self.device.type == "cpu" and simfeatup_cpu.numba_available():
                kernels = simfeatup_cpu.stage_kernels(windows, self._upsampler_weights(), self._correct)
                upsample = lambda grid: simfeatup_cpu.apply_stage_kernels(grid, kernels)  # noqa: E731
            else:
                kernels = self.upsampler.stage_kernels(x)
                upsample = lambda grid: self._apply_in_torch(grid, kernels)  # noqa: E731
            return upsampled_logits(cls, patches, text_features, gba_lambda, weight, bias, upsample)

    def _upsampler_weights(self) -> dict[str, np.ndarray]:
        if self._cpu_weights is None:
            self._cpu_weights = weights_from_upsampler(self.upsampler)
        return self._cpu_weights

    def _correct(self, combined: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.upsampler.up.corrected_kernel_channels_last(torch.from_numpy(combined),
                                                                    torch.from_numpy(guidance)).numpy()

    def _apply_in_torch(self, grid: np.ndarray, kernels: list[torch.Tensor]) -> np.ndarray:
        source = torch.from_numpy(grid).to(self.device).permute(0, 3, 1, 2)
        return apply_stage_kernels(source, kernels, self.upsampler.up.radius).permute(0, 2, 3, 1).cpu().numpy()

    def text_features(self, queries: Sequence[str]) -> np.ndarray:
        """Per query: the 80 OpenAI ImageNet prompts, each embedding normalised, averaged, normalised again: (Q, D)."""
        key = tuple(queries)
        if key not in self._text_cache:
            self._text_cache[key] = self._encode_queries(key)
        return self._text_cache[key]

    def _encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        features = []
        with torch.inference_mode():
            for query in queries:
                tokens = tokenize([template(query) for template in OPENAI_IMAGENET_TEMPLATES],
                                  self.clip.context_length).to(self.device)
                embedded = self.clip.encode_text(tokens)
                embedded = embedded / embedded.norm(dim=-1, keepdim=True)
                mean = embedded.mean(dim=0)
                features.append(mean / mean.norm())
        return torch.stack(features).float().cpu().numpy()


def load_model_from_checkpoints(clip: str | os.PathLike, upsampler: str | os.PathLike | None = None,
                                arch: str | os.PathLike = "ViT-B-16", quick_gelu: bool = True,
                                attention: str = "SegEarth", last_n: int = 1,
                                device: str | torch.device = "cpu") -> SegEarthModel:
    """A ``SegEarthModel`` from an open_clip CLIP state dict and (optionally) a SimFeatUp checkpoint."""
    model = build_clip(arch, quick_gelu)
    model.load_state_dict(load_state_dict(clip), strict=True)
    ups = load_simfeatup(upsampler) if upsampler else None
    if ups is not None and ups.up.feat_dim != model.visual.output_dim:
        raise ValueError(f"the upsampler carries {ups.up.feat_dim} channels but the CLIP embeds "
                         f"{model.visual.output_dim}: they do not belong together")
    return SegEarthModel(model, ups, attention=attention, last_n=last_n, device=device)
