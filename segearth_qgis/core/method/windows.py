"""The reference's sliding windows: the grid, the patch padding, the batches, and the logits averaged over them."""

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..common.feedback import Cancelled
from .model import SegmentationModel
from .resize import resize_bilinear


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
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


def patch_padding(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) to multiples of the patch size, split as the reference splits it."""
    pad_w = -width % patch
    pad_h = -height % patch
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HxWx3 RGB to float32 3xHxW, CLIP-normalised with the reference's constants."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    return (chw - np.asarray(mean, np.float32).reshape(3, 1, 1)) / np.asarray(std, np.float32).reshape(3, 1, 1)


def window_batches(model: SegmentationModel, boxes: Sequence[tuple[int, int, int, int]],
                   crop: Callable[[tuple[int, int, int, int]], np.ndarray], text_features: np.ndarray,
                   gba_lambda: float, crop_shape: tuple[int, int],
                   batch_size: int = 4) -> Iterator[list[tuple[tuple[int, int, int, int], np.ndarray]]]:
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


def sliding_window_logits(model: SegmentationModel, image: np.ndarray, text_features: np.ndarray, gba_lambda: float,
                          window: int, stride: int, batch_size: int = 4,
                          progress: Callable[[int, int], None] | None = None,
                          cancelled: Callable[[], bool] | None = None) -> np.ndarray:
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


def whole_image_logits(model: SegmentationModel, image: np.ndarray, text_features: np.ndarray,
                       gba_lambda: float) -> np.ndarray:
    """One pass over the whole normalised image (positional embeddings interpolated); logits at feature resolution."""
    _, height, width = image.shape
    if height % model.patch_size or width % model.patch_size:
        raise ValueError(f"whole-image mode needs both sides to be multiples of {model.patch_size} px, got "
                         f"{height}x{width}: choose a resize that gives such a size, or use sliding windows")
    return model.window_logits(image[None], text_features, gba_lambda)[0]
