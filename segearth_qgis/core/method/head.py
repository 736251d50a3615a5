"""The text head every backend shares: cosine logits with GBA, and SimFeatUp's exact cheap reordering.

In eval mode SimFeatUp is linear in its features and acts on every channel with the same spatial operator Op, so
``F = Op(S) + 0.1 (W Op(S) + b) = Op(A S) + 0.1 b`` with ``A = I + 0.1 W``. ``F(x)`` then lies in the span of
``[A S, 0.1 b]`` (at most P + 1 columns for P patches), so with an orthonormal basis U of that span only
``r = min(D, P + 1)`` channels ``U^T A S`` are upsampled, and ``|F(x)|`` and ``t^T F(x)`` come from the r coordinates
(``U^T t`` replaces t). Up to float rounding this equals the official order of operations.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from .simfeatup_cpu import cosine_head


def cls_logits(cls: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """The GBA term: normalised CLS against the text features, (B, Q)."""
    cls = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    return cls @ text_features.T


def patch_grid_logits(cls: np.ndarray, patches: np.ndarray, text_features: np.ndarray,
                      gba_lambda: float) -> np.ndarray:
    """Without an upsampler: GBA cosine logits on the patch grid, (B, Q, h, w)."""
    features = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    logits = np.einsum("bdhw,qd->bqhw", features, text_features)
    return (logits - np.float32(gba_lambda) * cls_logits(cls, text_features)[:, :, None, None]).astype(np.float32)


def channels_last_head(features: np.ndarray, offsets: np.ndarray, text: np.ndarray, gba: np.ndarray) -> np.ndarray:
    """``cosine_head`` of channels-last host features (B, H, W, r): logits (B, Q, H, W)."""
    batch, height, width, rank = features.shape
    return cosine_head(features.reshape(batch, height * width, rank), offsets, text, gba).reshape(batch, -1, height,
                                                                                                  width)


def upsampled_logits(cls: np.ndarray, patches: np.ndarray, text_features: np.ndarray, gba_lambda: float,
                     weight: np.ndarray, bias: np.ndarray, upsample: Callable[[np.ndarray], Any],
                     head: Callable[..., np.ndarray] = channels_last_head) -> np.ndarray:
    """GBA cosine logits at full window resolution (B, Q, 16h, 16w) through the reduced-channel SimFeatUp.

    ``upsample`` runs SimFeatUp's four stages on channels-last features (B, h, w, r); ``head(features, offsets, text,
    gba)`` turns what it returns into the logits: ``channels_last_head`` for host features (B, 16h, 16w, r), or one
    that runs where the features are (the GPU).
    """
    batch, dim, height, width = patches.shape
    fold = np.eye(dim) + 0.1 * np.asarray(weight, np.float64)
    offset = 0.1 * np.asarray(bias, np.float64)
    folded = fold @ patches.reshape(batch, dim, height * width).astype(np.float64)
    text = np.asarray(text_features, np.float64)
    reduced, offsets, reduced_text = [], [], []
    for window in folded:
        basis, _ = np.linalg.qr(np.concatenate([window, offset[:, None]], axis=1))
        reduced.append(basis.T @ window)
        offsets.append(basis.T @ offset)
        reduced_text.append(text @ basis)
    rank = reduced[0].shape[0]
    grid = np.stack(reduced).reshape(batch, rank, height, width).transpose(0, 2, 3, 1)
    features = upsample(np.ascontiguousarray(grid, np.float32))
    gba = np.float32(gba_lambda) * cls_logits(cls, text_features)
    return head(features, np.stack(offsets), np.stack(reduced_text), gba)
