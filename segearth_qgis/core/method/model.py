"""What the method asks of a backend: the one protocol that ``segment_image``, the sliding windows, the pipeline and
the loader name, satisfied structurally by the ONNX model (``runtime.onnx_backend.OnnxModel``) and the torch model
(``method.torch_model.SegEarthModel``) alike."""

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class SegmentationModel(Protocol):
    """A model that turns CLIP-normalised windows into GBA-corrected cosine logits at its feature resolution.

    A model loaded from a bundle also carries ``runtime`` (a ``RuntimeReport``: what actually runs), ``manifest``
    (the bundle's manifest dict) and ``bundle`` (its folder); they are optional, so callers read them with
    ``getattr(model, name, None)``.
    """

    @property
    def patch_size(self) -> int:
        """The ViT's patch side in pixels: windows are padded to multiples of it."""

    @property
    def image_mean(self) -> Sequence[float]:
        """Per RGB channel, the mean subtracted from 0..255 pixel values."""

    @property
    def image_std(self) -> Sequence[float]:
        """Per RGB channel, the standard deviation the centred pixel values are divided by."""

    def text_features(self, queries: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings, float32 (len(queries), D)."""

    def window_logits(self, windows: np.ndarray, text_features: np.ndarray, gba_lambda: float) -> np.ndarray:
        """GBA cosine logits (B, Q, h, w) for normalised windows (B, 3, H, W) and text features (Q, D)."""
