"""Seeded random weights in the official file formats, for tests, the demo and benchmarks (no pretrained download)."""

import json
from pathlib import Path

import torch

from segearth_qgis.core.method.simfeatup import JBUOne
from segearth_qgis.core.method.torch_model import build_clip

# A CLIP ViT-B/16 in miniature (the shape of the reference's tiny test model): same patch size and window size.
TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_random_checkpoints(folder, arch="tiny", quick_gelu=True, seed=0):
    """Write ``clip.pt`` (open_clip state dict), ``simfeatup.ckpt`` (Lightning format) and, for ``tiny``, the config.

    Returns ``{"clip": path, "upsampler": path, "arch": name_or_json_path, "quick_gelu": bool}``, the keyword
    arguments of ``load_model_from_checkpoints``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if arch == "tiny":
        arch = str(folder / "tiny-vit16.json")
        Path(arch).write_text(json.dumps(TINY_ARCH, indent=1))
    torch.manual_seed(seed)
    clip = build_clip(arch, quick_gelu)
    upsampler = JBUOne(clip.visual.output_dim)
    with torch.no_grad():
        upsampler.up.range_temp.fill_(0.5)
        upsampler.up.sigma_spatial.fill_(0.8)
    torch.save(clip.state_dict(), folder / "clip.pt")
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in upsampler.state_dict().items()},
                "epoch": 0, "global_step": 0}, folder / "simfeatup.ckpt")
    return {"clip": str(folder / "clip.pt"), "upsampler": str(folder / "simfeatup.ckpt"), "arch": arch,
            "quick_gelu": quick_gelu}
