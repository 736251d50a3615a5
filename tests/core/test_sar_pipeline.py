"""Radar layers through the streaming pipeline and segearth:segment: sensor choice, SAR reads, rotated grids."""

import os
import subprocess

import numpy as np
import pytest
from osgeo import gdal, osr
from rasters import UTM32_ORIGIN, read_band, scene_bands, srs_wkt, write_geotiff

from segearth_qgis.core.gis.raster import RasterInputError
from segearth_qgis.core.gis.sar import decide_sensor
from segearth_qgis.core.gis.source import ProcessingSource
from segearth_qgis.core.method.vocabulary import Vocabulary
from segearth_qgis.core.pipeline import SegmentOptions, SegmentOutputs, model_gba_lambda, segment_raster
from tools.build.plugin import stage_plugin

ROTATED = (UTM32_ORIGIN[0], 8.0, 6.0, UTM32_ORIGIN[1], 6.0, -8.0)   # 10 m pixels turned by 36.87 degrees
NO_EPSG_WKT = ('PROJCS["local transverse mercator",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
               '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION['
               '"Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",9.5],'
               'PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],'
               'UNIT["metre",1]]')


def write(path, bands, geotransform=(UTM32_ORIGIN[0], 10.0, 0.0, UTM32_ORIGIN[1], 0.0, -10.0), wkt=None,
          descriptions=()):
    """10 m pixels in UTM 32N unless given: a geotransform that may be rotated, a CRS without EPSG code."""
    return write_geotiff(path, bands, 32632, geotransform, wkt=wkt, descriptions=descriptions)


def dual_pol(height=48, width=64, seed=0, border=6):
    """VV, VH linear intensity (VH about 7 dB lower) with a zero-filled GRD border on the left."""
    rng = np.random.default_rng(seed)
    vv = rng.lognormal(-3.0, 1.0, (height, width)).astype(np.float32)
    vh = (vv * 0.2 * rng.lognormal(0.0, 0.3, (height, width))).astype(np.float32)
    vv[:, :border] = 0
    vh[:, :border] = 0
    return vv, vh


def expected_gray(decibels, stretch):
    """The stretch, written independently: low..high dB to 0..255, rounded, clipped."""
    scaled = (decibels - stretch.low) * 255.0 / (stretch.high - stretch.low)
    return np.clip(np.nan_to_num(scaled), 0, 255).round()


def test_vv_band_is_read_as_stretched_decibels_with_zero_borders_masked(tmp_path):
    vv, vh = dual_pol()
    path = write(tmp_path / "s1.tif", [vh, vv], descriptions=["VH", "VV"])
    source = ProcessingSource(path, bands=[1, 2, 1], sensor="sar")
    assert source.bands == [2]
    assert any("BANDS [1, 2, 1] ignored" in note for note in source.notes)
    assert source.stretch.scale == "intensity" and source.stretch.polarisation == "VV"
    decibels = 10 * np.log10(vv[:, 6:].astype(np.float64))
    assert (source.stretch.low, source.stretch.high) == pytest.approx(np.percentile(decibels, [2, 98]))
    rgb, valid = source.read(0, 48)
    assert not valid[:, :6].any() and valid[:, 6:].all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[:, 6:, 0], expected_gray(decibels, source.stretch))
    native = source.native_valid(0, 48)
    assert not native[:, :6].any() and native[:, 6:].all()
    top, _ = source.read(0, 20)
    bottom, _ = source.read(20, 48)
    np.testing.assert_array_equal(np.concatenate([top, bottom]), rgb)


def test_requested_polarisation_and_complex_values(tmp_path):
    rng = np.random.default_rng(3)
    slc = (rng.normal(0, 30, (2, 24, 32)) + 1j * rng.normal(0, 30, (2, 24, 32))).astype(np.complex64)
    path = write(tmp_path / "slc.tif", slc, descriptions=["HH", "HV"])
    source = ProcessingSource(path, sensor="sar", polarisation="hv")
    assert source.bands == [2] and source.stretch.scale == "complex"
    decibels = 10 * np.log10(slc[1].real.astype(np.float64) ** 2 + slc[1].imag.astype(np.float64) ** 2)
    rgb, valid = source.read(0, 24)
    assert valid.all()
    np.testing.assert_array_equal(rgb[..., 0], expected_gray(decibels, source.stretch))
    with pytest.raises(RasterInputError, match="complex .radar. bands.*SENSOR=sar"):
        ProcessingSource(path, sensor="optical")


def test_resampling_averages_linear_intensity_on_a_rotated_grid(tmp_path):
    """2x coarser: each processing pixel is the dB of the mean intensity of its 2x2 valid source pixels."""
    vv, vh = dual_pol(border=5)
    amplitude = np.sqrt(vv)
    path = write(tmp_path / "amp.tif", [amplitude], ROTATED, descriptions=["VV amplitude"])
    source = ProcessingSource(path, sensor="sar", resolution=20.0)
    assert source.stretch.scale == "amplitude" and source.band_reader.read_scale == "intensity"
    assert source.resampling == "average"
    width, height = source.grid.width, source.grid.height
    assert (width, height) == (32, 24)
    intensity = amplitude.astype(np.float64) ** 2
    rgb, valid = source.read(0, height)
    expected = np.full((height, width), np.nan)
    for r in range(height):
        for c in range(width):
            block = intensity[2 * r:2 * r + 2, 2 * c:2 * c + 2]
            block = block[block > 0]
            if block.size:
                expected[r, c] = 10 * np.log10(block.mean())
    np.testing.assert_array_equal(valid, np.isfinite(expected))
    assert np.abs(rgb[..., 0][valid] - expected_gray(expected, source.stretch)[valid]).max() <= 1


@pytest.mark.parametrize("geotransform,wkt", [
    (ROTATED, NO_EPSG_WKT),
    ((UTM32_ORIGIN[0] + 640.0, -10.0, 0.0, UTM32_ORIGIN[1] - 480.0, 0.0, 10.0), srs_wkt(32632)),  # mirrored both ways
])
@pytest.mark.parametrize("resolution", [0.0, 15.0])
def test_rotated_and_mirrored_grids_stay_on_the_input_grid(tiny_model, tmp_path, geotransform, wkt, resolution):
    """The pipeline works in pixel space: the labels equal those of the same pixels on a north-up grid."""
    bands = scene_bands(60, 80, seed=4)
    north_up = write(tmp_path / "north.tif", bands)
    turned = write(tmp_path / "turned.tif", bands, geotransform, wkt)
    options = SegmentOptions(Vocabulary.parse("building,roof\nroad\ntree"), resolution=resolution)
    outputs = {}
    for name, path in (("north", north_up), ("turned", turned)):
        outputs[name] = tmp_path / f"{name}-classes.tif"
        segment_raster(tiny_model, path, SegmentOutputs(str(outputs[name])), options)
    np.testing.assert_array_equal(read_band(outputs["turned"]), read_band(outputs["north"]))
    written = gdal.Open(str(outputs["turned"]))
    assert written.GetGeoTransform() == pytest.approx(geotransform)
    same_crs = osr.SpatialReference(written.GetProjection()).IsSame(osr.SpatialReference(wkt))
    assert same_crs and (written.RasterXSize, written.RasterYSize) == (80, 60)


def test_extent_on_a_rotated_grid_covers_its_corners(tiny_model, tmp_path):
    path = write(tmp_path / "turned.tif", scene_bands(60, 80, seed=5), ROTATED)
    source = ProcessingSource(path)
    corners = [gdal.ApplyGeoTransform(ROTATED, c, r) for c, r in ((10, 20), (30, 20), (10, 40), (30, 40))]
    xs, ys = zip(*corners, strict=True)
    window = ProcessingSource(path, extent=(min(xs), min(ys), max(xs), max(ys))).window
    col, row, cols, rows = window
    assert col <= 10 and row <= 20 and col + cols >= 30 and row + rows >= 40
    assert source.window == (0, 0, 80, 60)


def test_sensor_decision_order(tmp_path, tiny_bundle, tiny_sar_bundle):
    vv, vh = dual_pol()
    radar = write(tmp_path / "s1.tif", [vv, vh], descriptions=["VV", "VH"])
    optical = write(tmp_path / "rgb.tif", scene_bands(20, 20))
    plain_float = write(tmp_path / "float.tif", [vv, vh])
    assert decide_sensor(radar)[0] == "sar"
    assert "polarisation names" in decide_sensor(radar)[1]
    assert decide_sensor(optical)[0] == "optical"
    sensor, reason = decide_sensor(plain_float)
    assert sensor == "optical" and "set SENSOR=sar" in reason
    assert decide_sensor(plain_float, "sar")[0] == "sar"
    assert decide_sensor(radar, "optical")[0] == "optical"
    assert decide_sensor(radar, preset_modality="optical")[0] == "optical"
    assert decide_sensor(optical, preset_modality="sar")[0] == "sar"
    assert decide_sensor(radar, model_modality="optical") == (
        "optical", "optical, the modality of the chosen model bundle (its manifest)")
    assert decide_sensor(None)[0] == "optical"
    with pytest.raises(RasterInputError, match="SENSOR=sar but the chosen model bundle is a optical model"):
        decide_sensor(radar, "sar", model_modality="optical")


def test_lambda_comes_from_the_bundle_unless_given(tiny_sar_bundle):
    from segearth_qgis.core.runtime.loader import load_bundle

    model = load_bundle(tiny_sar_bundle, "onnx", "cpu")
    assert model.manifest["modality"] == "sar" and model.manifest["attention"] == "SCLIP"
    model.manifest = {**model.manifest, "gba_lambda": 0.45}
    vocabulary = Vocabulary.parse("water")
    assert model_gba_lambda(model, SegmentOptions(vocabulary)) == 0.45
    assert model_gba_lambda(model, SegmentOptions(vocabulary, gba_lambda=0.0)) == 0.0
    assert model_gba_lambda(object(), SegmentOptions(vocabulary)) == 0.3


def test_qgis_process_auto_sensor_uses_the_sar_bundle(tiny_bundle, tiny_sar_bundle, tmp_path, monkeypatch):
    """A two-band float32 VV/VH GeoTIFF with SENSOR=auto and no MODEL: the default SAR model runs on VV."""
    from segearth_qgis.core.runtime.store import install_bundle

    store = tmp_path / "models"
    monkeypatch.setenv("SEGEARTH_MODEL_DIR", str(store))
    install_bundle(tiny_bundle)
    install_bundle(tiny_sar_bundle)
    vv, vh = dual_pol(96, 128)
    source = write(tmp_path / "s1.tif", [vv, vh], descriptions=["VV", "VH"])
    staged = stage_plugin(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    out = tmp_path / "classes.tif"
    process = subprocess.run(["qgis_process.bin", "run", "segearth:segment", "--", f"INPUT={source}",
                              "CLASSES=water\nbuilding\nfarmland,grass", "SENSOR=auto", "DEVICE=cpu",
                              f"OUTPUT={out}"], env=env, capture_output=True, text=True, timeout=300)
    log = process.stdout + process.stderr
    assert process.returncode == 0, log
    assert "sensor: SAR evidence (polarisation names (band 1 VV, band 2 VH))" in log
    assert f"model: bundle {store / tiny_sar_bundle.name}" in log
    assert "band 1 (VV) used" in log and "global bias lambda 0.3" in log
    dataset = gdal.Open(str(out))
    band = dataset.GetRasterBand(1)
    band.GetDescription()
    assert list(band.GetCategoryNames()) == ["water", "building", "farmland", "unclassified"]
    assert band.GetRasterColorTable().GetCount() >= 4
    assert out.with_suffix(".qml").is_file()
    labels = band.ReadAsArray()
    assert (labels[:, :6] == 255).all() and (labels[:, 6:] < 4).all()
    assert dataset.GetGeoTransform() == gdal.Open(source).GetGeoTransform()
