"""SegEarth-OV's method and pipeline without QGIS: the public API for the plugin, the command line and notebooks.

The layers below it, each a folder that imports only the ones before it: ``common`` (feedback, files, downloads,
resources, choice lists), ``method`` (the exact SegEarth-OV computation), ``runtime`` and ``gis`` (bundles and their
backends; GDAL I/O), then ``pipeline``, with ``eval`` and ``train`` on top; ``setup`` (the dependency installer)
imports only ``common``. Names that need torch or GDAL are imported on first use, so the rest works without them.
"""

from importlib import import_module

from .common.feedback import Cancelled, Feedback
from .method.model import SegmentationModel
from .method.segment import SegmentationResult, classify, segment_image
from .method.vocabulary import Vocabulary
from .method.windows import window_boxes

_LAZY_NAMES = {
    "load_model_from_checkpoints": "method.torch_model",
    "SegEarthModel": "method.torch_model",
    "build_clip": "method.torch_model",
    "JBUOne": "method.simfeatup",
    "load_simfeatup": "method.simfeatup",
    "load_bundle": "runtime.loader",
    "load_model": "runtime.loader",
    "segment_raster": "pipeline",
    "resolve_options": "pipeline",
    "SegmentOptions": "pipeline",
    "SegmentOutputs": "pipeline",
    "RasterSegmentation": "pipeline",
}

__all__ = ["Cancelled", "Feedback", "SegmentationModel", "SegmentationResult", "Vocabulary", "classify",
           "segment_image", "window_boxes", *_LAZY_NAMES]


def __getattr__(name: str) -> object:
    if name in _LAZY_NAMES:
        return getattr(import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
