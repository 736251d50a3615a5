"""The demo command end to end, as the README's main-job command runs it."""

import subprocess
import sys

import numpy as np
from PIL import Image

from segearth_qgis.core.preview import class_colors


def test_demo_writes_preview_and_labels_and_warns(tmp_path):
    run = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "RANDOMLY INITIALISED" in run.stderr and "MEANINGLESS" in run.stderr
    labels = np.load(tmp_path / "labels.npy")
    assert labels.shape == (480, 640) and labels.dtype == np.uint8 and labels.max() < 6
    preview = Image.open(tmp_path / "preview.png")
    assert preview.size == (2 * 640 + 220 + 30, 480 + 44)
    colors = np.array(class_colors(["background", "building", "road", "water", "tree", "field"]), np.uint8)
    right = np.asarray(preview.convert("RGB"))[34:34 + 480, 20 + 640:20 + 1280]
    np.testing.assert_array_equal(right, colors[labels])
    assert str(tmp_path / "preview.png") in run.stdout


def test_background_classes_are_grey_and_the_rest_distinct():
    colors = class_colors(["background", "building", "road", "Clutter", "water"])
    assert colors[0] == colors[3] == (160, 160, 160)
    assert len({colors[1], colors[2], colors[4]}) == 3
