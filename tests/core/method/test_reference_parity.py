"""segment_image against the official implementation's outputs on tiny random models (../shared/reference)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segearth_qgis.core import Vocabulary, load_model_from_checkpoints, segment_image, window_boxes
from segearth_qgis.core.method.resize import rescale_uint8
from segearth_qgis.core.method.windows import normalize

CASES = ["tiny-optical", "tiny-optical-thd", "tiny-sar"]


@pytest.fixture(scope="module", params=CASES)
def case(request, reference_root):
    folder = reference_root / request.param
    settings = json.loads((folder / "case.json").read_text())
    model = load_model_from_checkpoints(folder / "clip.pt", folder / "ups.ckpt", arch=str(folder / settings["arch"]),
                                        quick_gelu=settings["quick_gelu"], attention=settings["attention"],
                                        last_n=settings["last_n"])
    rgb = np.asarray(Image.open(folder / "image.png").convert("RGB"))
    vocab = Vocabulary.parse((folder / "classes.txt").read_text())
    result = segment_image(model, rgb, vocab, prob_threshold=settings["prob_thd"], background_index=settings["bg_idx"],
                           gba_lambda=settings["lam"], resize_longer_side=settings["resize"],
                           window=settings["crop"], stride=settings["stride"])
    return {"settings": settings, "model": model, "rgb": rgb, "vocab": vocab, "result": result,
            "expected": dict(np.load(folder / "expected.npz"))}


def test_logits_probabilities_and_labels(case):
    result, expected = case["result"], case["expected"]
    assert result.logits.shape == expected["logits"].shape
    assert np.abs(result.logits - expected["logits"]).max() < 1e-4
    assert np.abs(result.probabilities - expected["probs"]).max() < 1e-4
    assert (result.labels == expected["labels"]).mean() >= 0.999


def test_background_share_matches_and_the_threshold_fires(case):
    background = case["settings"]["bg_idx"]
    ours = (case["result"].labels == background).mean()
    assert abs(ours - (case["expected"]["labels"] == background).mean()) <= 0.001
    if case["settings"]["prob_thd"] >= 0.5:
        assert ours > 0.3


def test_text_features_and_query_classes(case):
    np.testing.assert_allclose(case["model"].text_features(case["vocab"].queries), case["expected"]["text_features"],
                               atol=1e-5)
    np.testing.assert_array_equal(case["vocab"].query_class, case["expected"]["query_idx"])


def test_resize_windows_and_first_window_tokens(case):
    expected, settings = case["expected"], case["settings"]
    resized = rescale_uint8(case["rgb"], settings["resize"])
    np.testing.assert_array_equal(resized, expected["input_resized_bgr"][..., ::-1])
    boxes = window_boxes(*resized.shape[:2], settings["crop"], settings["stride"])
    np.testing.assert_array_equal(np.array(boxes), expected["window_boxes"])
    image = normalize(resized, case["model"].image_mean, case["model"].image_std)
    y1, y2, x1, x2 = boxes[0]
    with torch.no_grad():
        window = torch.from_numpy(np.ascontiguousarray(image[None, :, y1:y2, x1:x2]))
        cls, patches = case["model"].encode_windows(window)
    np.testing.assert_allclose(cls[0].numpy(), expected["crop_cls"], atol=1e-5)
    np.testing.assert_allclose(patches[0].numpy(), expected["crop_patches"], atol=1e-5)
