"""SegEarth-OV's method and pipeline without QGIS: usable from the plugin, the command line and notebooks.

Names that need torch are imported on first use, so the rest works in an interpreter without it.
"""

from .segment import Cancelled, SegmentationResult, classify, segment_image, window_boxes
from .vocabulary import Vocabulary

_TORCH_NAMES = {
    "load_model_from_checkpoints": "torch_model",
    "SegEarthModel": "torch_model",
    "build_clip": "torch_model",
    "JBUOne": "simfeatup",
    "load_simfeatup": "simfeatup",
}

__all__ = ["Cancelled", "SegmentationResult", "Vocabulary", "classify", "segment_image", "window_boxes",
           *_TORCH_NAMES]


def __getattr__(name):
    if name in _TORCH_NAMES:
        from importlib import import_module

        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
