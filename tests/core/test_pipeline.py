"""The streaming GIS pipeline against segment_image in memory: no seams, same labels, right grids, nothing left over."""

import json

import numpy as np
import pytest
from osgeo import gdal
from rasters import read_band, scene_bands, write_geotiff

from segearth_qgis.core import Cancelled, Vocabulary, classify, segment_image
from segearth_qgis.core.common.feedback import Feedback
from segearth_qgis.core.gis.raster import RasterInputError, snap_window
from segearth_qgis.core.gis.source import ProcessingSource
from segearth_qgis.core.method.resize import resize_bilinear
from segearth_qgis.core.method.windows import sliding_window_logits
from segearth_qgis.core.pipeline import SegmentOptions, SegmentOutputs, segment_raster

CLASSES = "background\nbuilding,roof\nroad\nwater,river\ntree"


class Recorder(Feedback):
    def __init__(self, cancel_after=None):
        self.fractions, self.messages, self.cancel_after = [], [], cancel_after

    def progress(self, fraction):
        self.fractions.append(fraction)

    def cancelled(self):
        return self.cancel_after is not None and len(self.fractions) >= self.cancel_after

    def info(self, text):
        self.messages.append(text)

    warn = info


def in_memory(model, rgb, vocabulary, out_hw, threshold=0.0, background=0):
    """segment_image's own steps on the processing array, then the same bilinear to the output grid."""
    from segearth_qgis.core.method.windows import normalize

    image = normalize(rgb, model.image_mean, model.image_std)
    logits = sliding_window_logits(model, image, model.text_features(vocabulary.queries), 0.3, 224, 112, 4)
    logits = resize_bilinear(logits, *out_hw)
    return classify(logits, vocabulary.query_class, threshold, background)


def test_streamed_raster_equals_segment_image_in_memory(tiny_model, tmp_path):
    source_path = write_geotiff(tmp_path / "wide.tif", scene_bands(400, 760, seed=3))
    vocabulary = Vocabulary.parse(CLASSES)
    outputs = SegmentOutputs(str(tmp_path / "classes.tif"), confidence=str(tmp_path / "confidence.tif"))
    feedback = Recorder()
    result = segment_raster(tiny_model, source_path, outputs, SegmentOptions(vocabulary, batch_size=4), feedback)
    source = ProcessingSource(source_path)
    rgb, valid = source.read(0, source.grid.height)
    source.close()
    assert valid.all() and rgb.shape == (400, 760, 3)
    reference = segment_image(tiny_model, rgb, vocabulary, resize_longer_side=None, batch_size=4)
    labels = read_band(outputs.classes)
    confidence = read_band(outputs.confidence)
    assert (labels == reference.labels).mean() >= 0.9999
    # 1e-5 on the logits is at most 50 * 1e-5 / 2 on a softmax probability
    np.testing.assert_allclose(confidence, reference.probabilities.max(axis=0), atol=2.5e-4)
    assert result.windows == 3 * 6 and result.skipped_windows == 0  # rows at y 0, 112, 176; columns every 112 px
    assert feedback.fractions[-1] == 1.0 and feedback.fractions == sorted(feedback.fractions)
    assert sum(a["pixels"] for a in result.areas) == 400 * 760
    assert np.isclose(sum(a["area_m2"] for a in result.areas), 400 * 760 * 0.25)
    counts = np.bincount(labels.ravel(), minlength=len(vocabulary) + 1)
    assert [a["pixels"] for a in result.areas] == counts[:len(result.areas)].tolist()
    assert json.loads(result.areas_json())["total_m2"] == pytest.approx(400 * 760 * 0.25)


def test_coarser_processing_resolution_upsamples_logits_to_the_input_grid(tiny_model, tmp_path):
    source_path = write_geotiff(tmp_path / "fine.tif", scene_bands(300, 520, seed=4))
    vocabulary = Vocabulary.parse(CLASSES)
    outputs = SegmentOutputs(str(tmp_path / "classes.tif"), confidence=str(tmp_path / "confidence.tif"))
    result = segment_raster(tiny_model, source_path, outputs, SegmentOptions(vocabulary, resolution=0.8))
    assert result.processing_size == (325, 188) and result.output_size == (520, 300)
    source = ProcessingSource(source_path, resolution=0.8)
    assert source.resampling == "average"
    rgb, _ = source.read(0, source.grid.height)
    source.close()
    probabilities, labels = in_memory(tiny_model, rgb, vocabulary, (300, 520))
    assert (read_band(outputs.classes) == labels).mean() >= 0.9999
    np.testing.assert_allclose(read_band(outputs.confidence), probabilities.max(axis=0), atol=2.5e-4)
    dataset = gdal.Open(outputs.classes)
    assert dataset.GetGeoTransform() == gdal.Open(source_path).GetGeoTransform()


def test_nodata_is_masked_and_all_nodata_windows_are_skipped(tiny_model, tmp_path):
    bands = scene_bands(240, 700, seed=5)
    bands[:, :, :300] = 0
    bands[:, 100:110, 400:420] = 0
    source_path = write_geotiff(tmp_path / "holes.tif", bands, nodata=0)
    outputs = SegmentOutputs(str(tmp_path / "classes.tif"), confidence=str(tmp_path / "confidence.tif"))
    result = segment_raster(tiny_model, source_path, outputs, SegmentOptions(Vocabulary.parse(CLASSES)))
    labels = read_band(outputs.classes)
    confidence = read_band(outputs.confidence)
    hole = (bands == 0).all(axis=0)
    assert (labels[hole] == 255).all() and (labels[~hole] < 5).all()
    assert (confidence[hole] == -1).all() and (confidence[~hole] > 0).all()
    assert result.skipped_windows == 2  # the window at x 0..224 in both window rows (y 0 and 16)
    assert sum(a["pixels"] for a in result.areas) == int((~hole).sum())


def test_all_nodata_raster_is_a_clear_error_and_leaves_nothing(tiny_model, tmp_path):
    source_path = write_geotiff(tmp_path / "empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    out = tmp_path / "out"
    with pytest.raises(RasterInputError, match="no valid pixels"):
        segment_raster(tiny_model, source_path, SegmentOutputs(str(out / "classes.tif")),
                       SegmentOptions(Vocabulary.parse(CLASSES)))
    assert not list(out.iterdir())


def test_cancel_between_windows_leaves_no_output(tiny_model, tmp_path):
    source_path = write_geotiff(tmp_path / "scene.tif", scene_bands(300, 600, seed=6))
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.tif").write_bytes(b"previous result")
    outputs = SegmentOutputs(str(out / "classes.tif"), confidence=str(out / "confidence.tif"),
                             vector=str(out / "polygons.gpkg"), areas_csv=str(out / "areas.csv"))
    with pytest.raises(Cancelled):
        segment_raster(tiny_model, source_path, outputs, SegmentOptions(Vocabulary.parse(CLASSES)),
                       Recorder(cancel_after=2))
    assert sorted(p.name for p in out.iterdir()) == ["classes.tif"]
    assert (out / "classes.tif").read_bytes() == b"previous result"


def test_extent_snaps_outwards_to_the_input_grid(tiny_model, tmp_path):
    source_path = write_geotiff(tmp_path / "scene.tif", scene_bands(200, 300, seed=7))
    x0, y0 = 500000.0, 5600000.0
    extent = (x0 + 10.2, y0 - 60.1, x0 + 80.7, y0 - 20.4)  # 0.5 m pixels
    from segearth_qgis.core.gis.raster import dataset_grid, open_raster

    assert snap_window(dataset_grid(open_raster(source_path)), extent) == (20, 40, 142, 81)
    outputs = SegmentOutputs(str(tmp_path / "part.tif"))
    segment_raster(tiny_model, source_path, outputs, SegmentOptions(Vocabulary.parse(CLASSES), extent=extent))
    dataset = gdal.Open(outputs.classes)
    assert (dataset.RasterXSize, dataset.RasterYSize) == (142, 81)
    assert dataset.GetGeoTransform() == (x0 + 10.0, 0.5, 0.0, y0 - 20.0, 0.0, -0.5)
    with pytest.raises(RasterInputError, match="does not overlap"):
        segment_raster(tiny_model, source_path, outputs,
                       SegmentOptions(Vocabulary.parse(CLASSES), extent=(0, 0, 10, 10)))


def test_sixteen_bit_bands_are_stretched_once_from_an_overview(tmp_path):
    rng = np.random.default_rng(0)
    bands = rng.integers(100, 4000, size=(4, 90, 120)).astype(np.uint16)
    source_path = write_geotiff(tmp_path / "pan.tif", bands)
    source = ProcessingSource(source_path, bands=[4, 2, 1])
    rgb, valid = source.read(0, 90)
    source.close()
    for channel, band in enumerate([4, 2, 1]):
        low, high = np.percentile(bands[band - 1].astype(np.float64), [2, 98])
        expected = np.clip(np.round((bands[band - 1] - low) * 255 / (high - low)), 0, 255)
        np.testing.assert_array_equal(rgb[..., channel], expected.astype(np.uint8))
    assert valid.all()
