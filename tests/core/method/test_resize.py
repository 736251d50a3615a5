"""Our port of cv2's uint8 INTER_LINEAR and mmcv's size rule against OpenCV itself; the float bilinear against torch."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_qgis.core.method.resize import rescale_size, resize_bilinear, resize_uint8_like_cv2


@pytest.mark.parametrize("src,dst", [
    ((375, 500), (336, 448)), ((500, 375), (448, 336)), ((97, 131), (251, 339)), ((1000, 999), (448, 447)),
    ((33, 7), (5, 3)), ((896, 896), (448, 448)), ((896, 600), (448, 300)), ((17, 1), (40, 2)), ((224, 224), (448, 448)),
    ((101, 203), (101, 57)), ((3, 640), (2, 448)),
])
@pytest.mark.parametrize("channels", [3, 1])
def test_resize_matches_cv2_bit_for_bit(src, dst, channels):
    rng = np.random.default_rng(sum(src) * 7 + sum(dst) + channels)
    image = rng.integers(0, 256, size=(*src, channels), dtype=np.uint8)
    if channels == 1:
        image = image[..., 0]
    expected = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    ours = resize_uint8_like_cv2(image, *dst)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected), f"{np.count_nonzero(ours != expected)} pixels differ"


def test_resize_matches_cv2_on_smooth_and_saturated_images():
    yy, xx = np.mgrid[0:301, 0:457]
    smooth = np.stack([(xx % 256), (yy % 256), ((xx + yy) // 3 % 256)], -1).astype(np.uint8)
    saturated = np.full((123, 77, 3), 255, np.uint8)
    for image in (smooth, saturated):
        for dst in [(200, 300), (448, 448), (61, 97)]:
            expected = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
            assert np.array_equal(resize_uint8_like_cv2(image, *dst), expected)


@pytest.mark.parametrize("size,longer,expected", [
    ((375, 500), 448, (336, 448)), ((500, 375), 448, (448, 336)), ((2160, 3840), 448, (252, 448)),
    ((512, 512), 448, (448, 448)), ((100, 150), 448, (299, 448)), ((1000, 40), 448, (448, 18)),
    ((512, 512), 224, (224, 224)),
])
def test_rescale_size_follows_mmcv(size, longer, expected):
    assert rescale_size(*size, longer) == expected


@pytest.mark.parametrize("src,dst", [((14, 14), (224, 224)), ((336, 448), (375, 500)), ((50, 70), (31, 29)),
                                     ((5, 9), (5, 9)), ((1, 4), (3, 8))])
def test_float_bilinear_matches_torch(src, dst):
    rng = np.random.default_rng(1)
    array = rng.standard_normal((4, *src)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(array)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    ours = resize_bilinear(array, *dst)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=2e-6, rtol=0)


def test_resize_matches_cv2_on_random_sizes():
    rng = np.random.default_rng(2024)
    for _ in range(40):
        src = tuple(int(v) for v in rng.integers(1, 300, size=2))
        dst = tuple(int(v) for v in rng.integers(1, 500, size=2))
        image = rng.integers(0, 256, size=(*src, 3), dtype=np.uint8)
        expected = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_uint8_like_cv2(image, *dst), expected), (src, dst)
