"""segment_image: the window grid, post-processing on hand-made logits, and a tiny model end to end."""

import numpy as np
import pytest

from segearth_qgis.core import Cancelled, Vocabulary, classify, load_model_from_checkpoints, segment_image, window_boxes
from segearth_qgis.core.method.windows import patch_padding


@pytest.mark.parametrize("height,width,expected", [
    (100, 150, [(0, 100, 0, 150)]),
    (224, 224, [(0, 224, 0, 224)]),
    (225, 224, [(0, 224, 0, 224), (1, 225, 0, 224)]),
    (252, 448, [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
                (28, 252, 0, 224), (28, 252, 112, 336), (28, 252, 224, 448)]),
    (448, 300, [(0, 224, 0, 224), (0, 224, 76, 300), (112, 336, 0, 224), (112, 336, 76, 300),
                (224, 448, 0, 224), (224, 448, 76, 300)]),
])
def test_window_grid_follows_the_reference_rule(height, width, expected):
    assert window_boxes(height, width, 224, 112) == expected


def test_window_grid_covers_every_pixel():
    for height, width in [(1, 1), (223, 577), (1000, 224), (449, 451)]:
        count = np.zeros((height, width), int)
        for y1, y2, x1, x2 in window_boxes(height, width, 224, 112):
            assert y2 - y1 == min(224, height) and x2 - x1 == min(224, width)
            count[y1:y2, x1:x2] += 1
        assert count.min() >= 1


def test_patch_padding_splits_like_the_reference():
    assert patch_padding(224, 224, 16) == (0, 0, 0, 0)
    assert patch_padding(100, 150, 16) == (5, 5, 6, 6)
    assert patch_padding(17, 31, 16) == (0, 1, 7, 8)


def test_classify_softmax_synonym_max_and_threshold():
    # queries: background | building, roof | water  (classes 0, 1, 1, 2); 2x2 pixels
    logits = np.array([
        [[0.30, 0.10], [0.00, 0.20]],
        [[0.10, 0.30], [0.00, 0.21]],
        [[0.10, 0.29], [0.00, 0.21]],
        [[0.05, 0.00], [0.00, 0.19]],
    ], np.float32)
    query_class = np.array([0, 1, 1, 2])
    probs, labels = classify(logits, query_class, prob_threshold=0.0, background_index=0)
    e = np.exp(50 * logits.astype(np.float64))
    softmax = e / e.sum(0)
    expected = np.stack([softmax[0], np.maximum(softmax[1], softmax[2]), softmax[3]])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(labels, [[0, 1], [0, 1]])
    assert probs.shape == (3, 2, 2) and probs.dtype == np.float32
    # all-equal logits: 0.25 per query, 0.25 max: below 0.3, so background (here class 2)
    _, labels = classify(logits, query_class, prob_threshold=0.3, background_index=2)
    assert labels[1, 0] == 2
    assert labels[0, 0] == 0 and labels[0, 1] == 1  # confident pixels keep their class
    # synonyms share mass: pixel (0,1) building 0.30 vs roof 0.29 -> class 1 with p = 1/(1+e^-0.5+...) ~ 0.62
    assert 0.6 < probs[1, 0, 1] < 0.63
    _, labels = classify(logits, query_class, prob_threshold=0.65, background_index=0)
    assert labels[0, 1] == 0


def test_segment_image_shapes_types_and_consistency(tiny_model):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 210, 3), dtype=np.uint8)
    vocab = Vocabulary.parse("background\nbuilding,roof\nwater")
    seen = []
    res = segment_image(tiny_model, rgb, vocab, prob_threshold=0.2, progress=lambda d, t: seen.append((d, t)))
    assert res.logits.shape == (4, 150, 210) and res.logits.dtype == np.float32
    assert res.probabilities.shape == (3, 150, 210) and res.probabilities.dtype == np.float32
    assert res.labels.shape == (150, 210) and res.labels.dtype == np.int64
    assert set(np.unique(res.labels)) <= {0, 1, 2}
    probs, labels = classify(res.logits, vocab.query_class, 0.2, 0)
    np.testing.assert_array_equal(labels, res.labels)
    np.testing.assert_allclose(probs, res.probabilities)
    # 150x210 -> 320x448: a 2x3 grid of windows, reported as it goes
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert np.all(rgb == rng.__class__(np.random.PCG64(0)).integers(0, 256, (150, 210, 3), dtype=np.uint8))


def test_batch_size_does_not_change_the_result(tiny_model):
    rgb = np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    vocab = Vocabulary.parse("a\nb\nc")
    one = segment_image(tiny_model, rgb, vocab, batch_size=1)
    many = segment_image(tiny_model, rgb, vocab, batch_size=16)
    np.testing.assert_allclose(one.logits, many.logits, atol=1e-5)


def test_whole_image_mode_equals_a_single_window(tiny_model):
    rgb = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    vocab = Vocabulary.parse("a\nb")
    windowed = segment_image(tiny_model, rgb, vocab, resize_longer_side=None)
    whole = segment_image(tiny_model, rgb, vocab, resize_longer_side=None, window=None)
    np.testing.assert_allclose(whole.logits, windowed.logits, atol=1e-6)


def test_whole_image_mode_at_448_and_its_size_rule(tiny_model):
    vocab = Vocabulary.parse("a\nb")
    rgb = np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    res = segment_image(tiny_model, rgb, vocab, resize_longer_side=448, window=None)
    assert res.logits.shape == (2, 300, 300) and np.isfinite(res.logits).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        segment_image(tiny_model, rgb[:250], vocab, resize_longer_side=None, window=None)


def test_without_upsampler_and_smaller_than_the_window(tiny_checkpoints):
    model = load_model_from_checkpoints(**{**tiny_checkpoints, "upsampler": None})
    rgb = np.random.default_rng(4).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    res = segment_image(model, rgb, Vocabulary.parse("a\nb\nc"), resize_longer_side=None)
    assert res.labels.shape == (90, 130) and np.isfinite(res.logits).all()


def test_upsampler_on_an_image_smaller_than_the_window(tiny_model):
    rgb = np.random.default_rng(5).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    res = segment_image(tiny_model, rgb, Vocabulary.parse("a\nb"), resize_longer_side=None)
    assert res.logits.shape == (2, 100, 150) and np.isfinite(res.logits).all()


def test_cancel_between_windows(tiny_model):
    rgb = np.zeros((300, 400, 3), np.uint8)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        segment_image(tiny_model, rgb, Vocabulary.parse("a\nb"), batch_size=1, cancelled=cancelled)
    assert len(calls) == 2


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8)])
def test_bad_input_is_a_clear_error(tiny_model, bad):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        segment_image(tiny_model, bad, Vocabulary.parse("a\nb"))


def test_background_index_must_name_a_class(tiny_model):
    with pytest.raises(ValueError, match="background index 5"):
        segment_image(tiny_model, np.zeros((32, 32, 3), np.uint8), Vocabulary.parse("a\nb"), background_index=5)
