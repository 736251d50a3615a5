"""SAR student distillation: agreement with the teacher on held-out windows, checkpoints, resume, cancel, bundle."""

import json

import numpy as np
import pytest
import torch
from osgeo import gdal
from qgis.core import QgsProcessingFeedback
from rasters import read_band, scene_bands, write_geotiff

from segearth_qgis.core.common.feedback import Cancelled, Feedback
from segearth_qgis.core.gis.raster import RasterInputError
from segearth_qgis.core.method.vocabulary import Vocabulary
from segearth_qgis.core.pipeline import SegmentOptions, SegmentOutputs, segment_raster
from segearth_qgis.core.runtime.loader import load_bundle
from segearth_qgis.core.train.sar_student import CHECKPOINT, HISTORY, PairedWindows, TrainSettings, train_sar_student


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An optical scene and a one-band SAR intensity that is a fixed non-linear function of it times speckle."""
    folder = tmp_path_factory.mktemp("pair")
    rgb = scene_bands(480, 460, seed=3)
    optical = write_geotiff(folder / "optical.tif", rgb)
    gray = rgb.astype(np.float32).mean(axis=0) / 255
    speckle = np.random.default_rng(1).gamma(4.0, 0.25, gray.shape)
    intensity = ((0.02 + 0.5 * gray ** 2) * speckle).astype(np.float32)
    sar = write_geotiff(folder / "sar.tif", intensity[None])
    return optical, sar, intensity


class StopAfter(Feedback):
    """Cancels once ``steps`` progress reports have arrived."""

    def __init__(self, steps):
        self.steps = steps
        self.reports = 0

    def progress(self, fraction):
        self.reports += 1

    def cancelled(self):
        return self.reports >= self.steps


def test_training_raises_held_out_agreement_and_writes_a_sar_bundle(tiny_bundle, pair, tmp_path):
    optical, sar, _ = pair
    settings = TrainSettings(steps=30, batch_size=6, learning_rate=1e-4, checkpoint_every=10, holdout_windows=8,
                             device="cpu")
    result = train_sar_student(optical, sar, tiny_bundle, tmp_path / "run", settings)
    before, after = result.holdout_before, result.holdout_after
    print(f"held-out agreement: CLS cosine {before['cls']:.4f} -> {after['cls']:.4f}, patch cosine "
          f"{before['patch']:.4f} -> {after['patch']:.4f}")
    assert after["cls"] > before["cls"] + 0.02
    assert after["patch"] > before["patch"] + 0.3
    assert result.steps_done == 30 and result.resumed_from == 0 and result.device == "cpu"
    rows = (tmp_path / "run" / HISTORY).read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 31
    manifest = json.loads((tmp_path / "run" / "sar-student-run" / "manifest.json").read_text())
    assert (manifest["modality"], manifest["attention"], manifest["last_n"]) == ("sar", "SCLIP", 2)
    assert manifest["source"]["clip"]["steps"] == 30
    student = load_bundle(result.bundle, "onnx", "cpu")
    teacher = load_bundle(tiny_bundle, "onnx", "cpu")
    queries = ["water", "building"]
    np.testing.assert_allclose(student.text_features(queries), teacher.text_features(queries), atol=1e-5)
    out = tmp_path / "classes.tif"
    segment_raster(student, sar, SegmentOutputs(str(out)),
                   SegmentOptions(Vocabulary.parse("water\nbuilding"), sensor="sar"))
    assert set(np.unique(read_band(out))) <= {0, 1, 2}


def test_cancel_keeps_a_checkpoint_and_resuming_matches_an_uninterrupted_run(tiny_bundle, pair, tmp_path):
    optical, sar, _ = pair
    settings = TrainSettings(steps=8, batch_size=4, learning_rate=1e-4, checkpoint_every=100, holdout_windows=4,
                             device="cpu")
    whole = train_sar_student(optical, sar, tiny_bundle, tmp_path / "whole", settings, export=False)
    with pytest.raises(Cancelled):
        train_sar_student(optical, sar, tiny_bundle, tmp_path / "split", settings, StopAfter(3), export=False)
    kept = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    assert kept["step"] == 3
    resumed = train_sar_student(optical, sar, tiny_bundle, tmp_path / "split", settings, export=False)
    assert (resumed.resumed_from, resumed.steps_done) == (3, 8)
    assert resumed.holdout_before == whole.holdout_before
    final = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)["student_visual"]
    reference = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=False)["student_visual"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=1e-5)
    assert len((tmp_path / "split" / HISTORY).read_text().splitlines()) == 9
    with pytest.raises(RasterInputError, match="belongs to another run"):
        train_sar_student(optical, sar, tiny_bundle, tmp_path / "split",
                          TrainSettings(steps=9, window=112, device="cpu"), export=False)


def test_sar_on_another_grid_is_warped_and_nodata_windows_are_skipped(pair, tmp_path):
    optical, _, intensity = pair
    coarse = intensity[::2, ::2].copy()
    coarse[:, :20] = np.nan
    source = gdal.Open(optical)
    x0, dx, _, y0, _, dy = source.GetGeoTransform()
    sar = write_geotiff(tmp_path / "coarse.tif", coarse[None], geotransform=(x0, 2 * dx, 0, y0, 0, 2 * dy))
    data = PairedWindows(optical, sar, 224)
    try:
        assert any("warped onto the optical raster's grid" in note for note in data.notes)
        assert data.pair(0, 0) is None
        optical_rgb, sar_rgb = data.pair(0, 100)
        assert optical_rgb.shape == sar_rgb.shape == (224, 224, 3)
        assert data.train_rows == (0, 480 - 224 - 224) and data.holdout_rows == (256, 256)
    finally:
        data.close()


def test_algorithm_trains_and_reports(segearth_processing, tiny_bundle, pair, tmp_path):
    import processing

    optical, sar, _ = pair
    result = processing.run("segearth:train_sar_student", {
        "OPTICAL": optical, "SAR": sar, "TEACHER": str(tiny_bundle), "STEPS": 4, "BATCH_SIZE": 4,
        "LEARNING_RATE": 1e-4, "DEVICE": "cpu", "OUTPUT": str(tmp_path / "training")}, feedback=QgsProcessingFeedback())
    assert result["BUNDLE"] == str(tmp_path / "training" / "sar-student-training")
    assert json.loads((tmp_path / "training" / "training.json").read_text())["steps_done"] == 4
    agreement = json.loads(result["AGREEMENT"])
    assert set(agreement) == {"before", "after"} and set(agreement["after"]) == {"cls", "patch"}
    assert load_bundle(result["BUNDLE"], "onnx", "cpu").manifest["modality"] == "sar"
