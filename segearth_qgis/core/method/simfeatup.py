"""SimFeatUp's JBUOne upsampler (one shared 11x11 joint bilateral stage applied 4 times), loadable from its checkpoint.

The module layout mirrors the official one so that the Lightning checkpoint loads strictly; the adaptive convolution
is computed as 121 shifted multiply-accumulates instead of an unfold, which would need gigabytes per window.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import simfeatup_cuda
from .checkpoints import load_state_dict


def adaptive_conv(padded: torch.Tensor, kernel: torch.Tensor, diameter: int) -> torch.Tensor:
    """``out[b,c,i,j] = sum_{a,b'} padded[b,c,i+a,j+b'] * kernel[b, a*d+b', i, j]`` for kernel (B, d*d, H, W): one
    fused kernel on CUDA where numba's CUDA target runs (``simfeatup_cuda``), else 121 multiply-adds."""
    if padded.is_cuda and diameter == simfeatup_cuda.DIAMETER and simfeatup_cuda.cuda_problem() is None:
        return simfeatup_cuda.fused_adaptive_conv(padded, kernel)
    height, width = kernel.shape[2:]
    out = torch.zeros(padded.shape[0], padded.shape[1], height, width, dtype=padded.dtype, device=padded.device)
    for a in range(diameter):
        for b in range(diameter):
            tap = kernel[:, a * diameter + b].unsqueeze(1)
            out.addcmul_(padded[:, :, a:a + height, b:b + width], tap)
    return out


def neighbourhood_dot(padded: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """For each of the d*d neighbours, the channel dot product with the centre: (B, d*d, H, W)."""
    height, width = center.shape[2:]
    diameter = padded.shape[2] - height + 1
    return torch.stack([(padded[:, :, a:a + height, b:b + width] * center).sum(1)
                        for a in range(diameter) for b in range(diameter)], dim=1)


class JBULearnedRange(nn.Module):
    """One x2 joint bilateral upsampling stage with a learned range kernel and a learned kernel correction."""

    def __init__(self, guidance_dim: int, feat_dim: int, key_dim: int, scale: int = 2, radius: int = 5) -> None:
        super().__init__()
        self.scale = scale
        self.radius = radius
        self.diameter = 2 * radius + 1
        self.feat_dim = feat_dim
        taps = self.diameter ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(taps, taps, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        keys = self.range_proj(guidance)
        padded = F.pad(keys, [self.radius] * 4, mode="reflect")
        temperature = self.range_temp.exp().clamp_min(1e-4).clamp_max(1e4)
        return F.softmax(temperature * neighbourhood_dot(padded, keys), dim=1)

    def spatial_kernel(self, device: torch.device) -> torch.Tensor:
        offsets = torch.linspace(-1, 1, self.diameter, device=device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        squared = (dy.square() + dx.square()).reshape(1, -1, 1, 1)
        return torch.exp(-squared / (2 * self.sigma_spatial ** 2))

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel d*d filter (B, d*d, H, W) for a guidance image (B, 3, H, W)."""
        combined = self.range_kernel(guidance) * self.spatial_kernel(guidance.device)
        combined = combined / combined.sum(1, keepdim=True).clamp(1e-7)
        return combined + 0.1 * self.fixup_proj(torch.cat([combined, guidance], dim=1))

    def corrected_kernel_channels_last(self, combined: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """``kernel``'s last step on channels-last tensors: the normalised filter (B, H, W, d*d) plus 0.1 times the
        learned correction of [filter; guidance (B, H, W, 3)]."""
        first, second = self.fixup_proj[0], self.fixup_proj[3]
        hidden = F.linear(torch.cat([combined, guidance], dim=-1), first.weight[:, :, 0, 0], first.bias)
        return combined + 0.1 * F.linear(F.gelu(hidden), second.weight[:, :, 0, 0], second.bias)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        height, width = guidance.shape[2:]
        upsampled = F.interpolate(source, (height, width), mode="bicubic", align_corners=False)
        padded = F.pad(upsampled, [self.radius] * 4, mode="reflect")
        return adaptive_conv(padded, self.kernel(guidance), self.diameter)


class JBUOne(nn.Module):
    """Four applications of one shared stage (x16), then a residual 1x1 projection."""

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.up = JBULearnedRange(3, feat_dim, 32, radius=5)
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))

    def check_grid(self, height: int, width: int) -> None:
        if 2 * height <= self.up.radius or 2 * width <= self.up.radius:
            raise ValueError(f"the window is too small for SimFeatUp: its feature grid {height}x{width} cannot "
                             f"be reflect-padded by {self.up.radius}; use a larger image or window")

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The official order: four stages at full channel count, then the 1x1 projection at full resolution."""
        for _ in range(4):
            height, width = source.shape[2:]
            self.check_grid(height, width)
            source = self.up(source, F.adaptive_avg_pool2d(image, (2 * height, 2 * width)))
        return source + 0.1 * self.fixup_proj(source)

    def stage_kernels(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four stages' per-pixel filters for an image whose sides are 16 times the feature grid's.

        The guidance of stage k is the image average-pooled by 2^(3-k) (what adaptive pooling does at these sizes).
        """
        self.check_grid(image.shape[2] // 16, image.shape[3] // 16)
        return [self.up.kernel(F.avg_pool2d(image, 2 ** (3 - k)) if k < 3 else image) for k in range(4)]

    def projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer 1x1 projection's weight (D, D) and bias (D,): output = S16 + 0.1 * (W S16 + b)."""
        conv = self.fixup_proj[1]
        return conv.weight[:, :, 0, 0], conv.bias


def weights_from_upsampler(upsampler: JBUOne) -> dict[str, np.ndarray]:
    """The JBUOne parameters the CPU path needs beside the graphs, as float32 arrays (``simfeatup_weights.npz``)."""
    stage = upsampler.up
    arrays = {
        "range_temp": stage.range_temp, "sigma_spatial": stage.sigma_spatial,
        "range_w0": stage.range_proj[0].weight[:, :, 0, 0], "range_b0": stage.range_proj[0].bias,
        "range_w1": stage.range_proj[3].weight[:, :, 0, 0], "range_b1": stage.range_proj[3].bias,
        "projection_w": upsampler.fixup_proj[1].weight[:, :, 0, 0], "projection_b": upsampler.fixup_proj[1].bias,
    }
    return {name: value.detach().cpu().float().numpy() for name, value in arrays.items()}


def apply_stage_kernels(source: torch.Tensor, kernels: list[torch.Tensor], radius: int = 5) -> torch.Tensor:
    """SimFeatUp's data path in torch: per stage, bicubic x2, reflect padding, then the adaptive convolution."""
    for kernel in kernels:
        upsampled = F.interpolate(source, kernel.shape[2:], mode="bicubic", align_corners=False)
        source = adaptive_conv(F.pad(upsampled, [radius] * 4, mode="reflect"), kernel, 2 * radius + 1)
    return source


def load_simfeatup(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> JBUOne:
    """A JBUOne from the official Lightning checkpoint ``{'state_dict': {'upsampler.<key>': tensor}}``, strictly."""
    state = load_state_dict(path, map_location)
    prefix = "upsampler."
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no 'upsampler.*' weights: is it a SimFeatUp checkpoint "
                         "(e.g. xclip_jbu_one_million_aid.ckpt)?")
    model = JBUOne(weights["fixup_proj.1.weight"].shape[0])
    model.load_state_dict(weights, strict=True)
    return model.eval()
