"""Image resizing exactly as the reference does it: mmcv's rescale size rule and OpenCV's fixed-point bilinear on uint8.

OpenCV computes uint8 INTER_LINEAR with 11-bit integer coefficients and a rounding shift, so a float bilinear differs
by one grey level on some pixels; that alone moves the logits beyond the parity tolerance, hence this port. The float
bilinear below reproduces torch's ``interpolate(mode="bilinear", align_corners=False)`` for logit maps.
"""

import numpy as np

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def rescale_size(height: int, width: int, longer_side: int) -> tuple[int, int]:
    """mmcv ``imrescale`` with ``scale=(s, s)``: the longer side becomes ``s``; returns (new_height, new_width)."""
    factor = min(longer_side / max(height, width), longer_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def _linear_taps(dst_len: int, src_len: int,
                 clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's per-destination source indices and 11-bit weights for one axis of INTER_LINEAR.

    Horizontally OpenCV moves a tap that falls outside the image onto the border with weights (1, 0); vertically it
    keeps the weights and only clamps the row indices, which rounds differently on the first and last rows.
    """
    scale = 1.0 / (dst_len / src_len)
    pos = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(pos).astype(np.int64)
    frac = (pos - index.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        below = index < 0
        frac[below] = 0
        index[below] = 0
        above = index >= src_len - 1
        frac[above] = 0
        index[above] = src_len - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(index, 0, src_len - 1), np.clip(index + 1, 0, src_len - 1), w0, w1


def resize_uint8_like_cv2(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)`` for uint8 HxW or HxWxC, bit for bit."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.copy()
    x0, x1, a0, a1 = _linear_taps(width, src_w, clamp_weights=True)
    y0, y1, b0, b1 = _linear_taps(height, src_h, clamp_weights=False)
    img = image.astype(np.int32)
    extra = (1,) * (img.ndim - 2)
    rows = img[:, x0] * a0.reshape(1, -1, *extra) + img[:, x1] * a1.reshape(1, -1, *extra)
    top = (rows[y0] >> 4) * b0.reshape(-1, 1, *extra) >> 16
    bottom = (rows[y1] >> 4) * b1.reshape(-1, 1, *extra) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def rescale_uint8(image: np.ndarray, longer_side: int) -> np.ndarray:
    """The reference's test-time resize: longer side to ``longer_side``, cv2 bilinear, uint8 result."""
    height, width = rescale_size(image.shape[0], image.shape[1], longer_side)
    return resize_uint8_like_cv2(image, height, width)


def bilinear_taps(dst_len: int, src_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's align_corners=False taps for one axis: first and second source index and the second's weight."""
    scale = np.float32(src_len / dst_len)
    pos = np.maximum((np.arange(dst_len, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    index = np.minimum(pos.astype(np.int64), src_len - 1)
    weight = (pos - index).astype(np.float32)
    return index, np.minimum(index + 1, src_len - 1), weight


def interpolate_taps(array: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
                     cols: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Blend ``array``'s last two axes at the given (first, second, weight) row and column taps."""
    x0, x1, wx = cols
    y0, y1, wy = rows
    blended = array[..., x0] * (1 - wx) + array[..., x1] * wx
    wy = wy[:, None]
    return (blended[..., y0, :] * (1 - wy) + blended[..., y1, :] * wy).astype(np.float32, copy=False)


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch ``interpolate(mode="bilinear", align_corners=False)`` over the last two axes of a float32 array."""
    src_h, src_w = array.shape[-2:]
    if (src_h, src_w) == (height, width):
        return array
    return interpolate_taps(array, bilinear_taps(height, src_h), bilinear_taps(width, src_w))
