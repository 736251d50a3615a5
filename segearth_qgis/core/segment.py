"""The SegEarth-OV inference pipeline around any backend: resize, sliding windows, logit averaging, softmax, labels.

A backend (torch here, ONNX later) turns normalised windows into GBA-corrected cosine logits at its feature
resolution; everything geometric and every post-processing step lives here, in numpy, once for every entry point.
"""

from dataclasses import dataclass

import numpy as np

from .resize import rescale_uint8, resize_bilinear

LOGIT_SCALE = 50.0


class Cancelled(Exception):
    """Raised between windows when the caller asked to stop."""


@dataclass
class SegmentationResult:
    logits: np.ndarray          # (queries, H, W) float32: window-averaged GBA logits, before scale and softmax
    probabilities: np.ndarray   # (classes, H, W) float32: softmax(50*logits) over queries, then max over synonyms
    labels: np.ndarray          # (H, W) int64 class index


def window_boxes(height, width, window, stride):
    """The reference's sliding-window grid as (y1, y2, x1, x2), rows first; the last window is flush with the border."""
    boxes = []
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride + window, height)
            x2 = min(c * stride + window, width)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


def patch_padding(height, width, patch):
    """Zero padding (left, right, top, bottom) to multiples of the patch size, split as the reference splits it."""
    pad_w = -width % patch
    pad_h = -height % patch
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def normalize(rgb, mean, std):
    """uint8 HxWx3 RGB to float32 3xHxW, CLIP-normalised with the reference's constants."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    return (chw - np.asarray(mean, np.float32).reshape(3, 1, 1)) / np.asarray(std, np.float32).reshape(3, 1, 1)


def window_batches(model, boxes, crop, text_features, gba_lambda, crop_shape, batch_size=4):
    """Yield ``[(box, logits (queries, h, w)), ...]`` one batch at a time; ``crop(box)`` gives that window's pixels.

    Every window has the same ``crop_shape`` (the reference crops min(window, side)); it is zero-padded to whole
    patches as the reference pads it, and the logits come back cropped to the window.
    """
    crop_h, crop_w = crop_shape
    left, right, top, bottom = patch_padding(crop_h, crop_w, model.patch_size)
    for start in range(0, len(boxes), batch_size):
        batch_boxes = boxes[start:start + batch_size]
        crops = np.stack([crop(box) for box in batch_boxes])
        if left or right or top or bottom:
            crops = np.pad(crops, ((0, 0), (0, 0), (top, bottom), (left, right)))
        logits = model.window_logits(crops, text_features, gba_lambda)
        logits = resize_bilinear(logits, crops.shape[2], crops.shape[3])[:, :, top:top + crop_h, left:left + crop_w]
        yield list(zip(batch_boxes, logits, strict=True))


def sliding_window_logits(model, image, text_features, gba_lambda, window, stride, batch_size=4,
                          progress=None, cancelled=None):
    """Average the per-window logits over the grid; ``image`` is normalised 3xHxW, the result (queries, H, W)."""
    _, height, width = image.shape
    boxes = window_boxes(height, width, window, stride)
    canvas = np.zeros((len(text_features), height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    done = 0
    batches = window_batches(model, boxes, lambda box: image[:, box[0]:box[1], box[2]:box[3]], text_features,
                             gba_lambda, (min(window, height), min(window, width)), batch_size)
    while True:
        if cancelled is not None and cancelled():
            raise Cancelled()
        batch = next(batches, None)
        if batch is None:
            break
        for (y1, y2, x1, x2), window_logits in batch:
            canvas[:, y1:y2, x1:x2] += window_logits
            count[y1:y2, x1:x2] += 1
        done += len(batch)
        if progress is not None:
            progress(done, len(boxes))
    return canvas / count


def whole_image_logits(model, image, text_features, gba_lambda):
    """One pass over the whole normalised image (positional embeddings interpolated); logits at feature resolution."""
    _, height, width = image.shape
    if height % model.patch_size or width % model.patch_size:
        raise ValueError(f"whole-image mode needs both sides to be multiples of {model.patch_size} px, got "
                         f"{height}x{width}: choose a resize that gives such a size, or use sliding windows")
    return model.window_logits(image[None], text_features, gba_lambda)[0]


def classify(logits, query_class, prob_threshold=0.0, background_index=0):
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


def segment_image(model, rgb, vocabulary, prob_threshold=0.0, background_index=0, gba_lambda=0.3,
                  resize_longer_side=448, window=224, stride=112, batch_size=4, progress=None, cancelled=None):
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
