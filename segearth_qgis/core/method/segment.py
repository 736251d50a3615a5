"""One image through SegEarth-OV as the reference evaluates it: resize, normalise, windows, then logits to labels.

A backend (torch_model.py here, or runtime/'s ONNX one) turns normalised windows into GBA-corrected cosine logits;
the resize, the windows (windows.py) and the post-processing run in numpy, the same for every entry point.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .model import SegmentationModel
from .resize import rescale_uint8, resize_bilinear
from .vocabulary import Vocabulary
from .windows import normalize, sliding_window_logits, whole_image_logits

LOGIT_SCALE = 50.0


@dataclass
class SegmentationResult:
    logits: np.ndarray          # (queries, H, W) float32: window-averaged GBA logits, before scale and softmax
    probabilities: np.ndarray   # (classes, H, W) float32: softmax(50*logits) over queries, then max over synonyms
    labels: np.ndarray          # (H, W) int64 class index


def classify(logits: np.ndarray, query_class: np.ndarray, prob_threshold: float = 0.0,
             background_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax at scale 50 over all queries, max over each class's synonyms, argmax, then the threshold rule."""
    scaled = logits * np.float32(LOGIT_SCALE)
    scaled -= scaled.max(axis=0, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=0, keepdims=True)
    num_classes = int(query_class.max()) + 1
    if num_classes == len(query_class):
        probabilities = scaled
    else:
        probabilities = np.stack([scaled[query_class == c].max(axis=0) for c in range(num_classes)])
    labels = probabilities.argmax(axis=0)
    labels[probabilities.max(axis=0) < prob_threshold] = background_index
    return probabilities, labels


def segment_image(model: SegmentationModel, rgb: np.ndarray, vocabulary: Vocabulary, prob_threshold: float = 0.0,
                  background_index: int = 0, gba_lambda: float = 0.3, resize_longer_side: int | None = 448,
                  window: int | None = 224, stride: int = 112, batch_size: int = 4,
                  progress: Callable[[int, int], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> SegmentationResult:
    """Segment one uint8 HxWx3 RGB image the way the reference evaluates it; see ``SegmentationResult``.

    ``resize_longer_side=None`` keeps the input size; ``window=None`` runs one whole-image pass instead of windows.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got {rgb.dtype} {rgb.shape}: scale other data to "
                         "8 bits and pick three bands first")
    if not 0 <= background_index < len(vocabulary):
        raise ValueError(f"background index {background_index} is not a class of this {len(vocabulary)}-class "
                         "vocabulary")
    height, width = rgb.shape[:2]
    resized = rescale_uint8(rgb, resize_longer_side) if resize_longer_side else rgb
    image = normalize(resized, model.image_mean, model.image_std)
    text_features = model.text_features(vocabulary.queries)
    if window:
        logits = sliding_window_logits(model, image, text_features, gba_lambda, window, stride, batch_size,
                                       progress, cancelled)
    else:
        logits = whole_image_logits(model, image, text_features, gba_lambda)
        if progress is not None:
            progress(1, 1)
    logits = resize_bilinear(logits, height, width)
    probabilities, labels = classify(logits, vocabulary.query_class, prob_threshold, background_index)
    return SegmentationResult(logits=logits, probabilities=probabilities, labels=labels)
