"""SAR detection, polarisation choice, decibels and the fixed stretch, on tiny GDAL rasters made in the test."""

import numpy as np
import pytest
from osgeo import gdal, gdal_array
from rasters import UTM32_ORIGIN, write_geotiff

from segearth_qgis.core.gis.raster import RasterInputError, open_raster
from segearth_qgis.core.gis.sar import (
    SarStretch,
    choose_polarisation,
    detect_sensor,
    guess_scale,
    sample_values,
    sar_stretch,
    to_decibels,
)

OPTICAL_REASON = ("no SAR evidence (data type {type}, {count}, no polarisation names or SAR metadata): treated as "
                  "optical; set SENSOR=sar to force radar processing")


def sar_raster(path, bands, descriptions=(), metadata=None, band_metadata=(), nodata=None):
    """10 m pixels in UTM 32N, any numpy type (complex included), with texts; opened for reading."""
    return open_raster(write_geotiff(path, bands, 32632, (UTM32_ORIGIN[0], 10.0, 0, UTM32_ORIGIN[1], 0, -10.0),
                                     nodata, descriptions=descriptions, metadata=metadata,
                                     band_metadata=band_metadata))


def intensity_bands(count, height=12, width=16, seed=0):
    return np.random.default_rng(seed).lognormal(-3.0, 1.0, (count, height, width)).astype(np.float32)


def complex_bands(count, height=12, width=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 40, (count, height, width)) + 1j * rng.normal(0, 40, (count, height, width))).astype(
        np.complex64)


# detection


def test_complex_bands_are_sar(tmp_path):
    decision = detect_sensor(sar_raster(tmp_path / "slc.tif", complex_bands(2)))
    assert decision.sensor == "sar"
    assert "complex data type CFloat32" in decision.reason
    assert decision.polarisations == (None, None)


def test_polarisation_descriptions_are_sar(tmp_path):
    decision = detect_sensor(sar_raster(tmp_path / "grd.tif", intensity_bands(2), descriptions=("VV", "VH")))
    assert decision.sensor == "sar"
    assert "band 1 VV, band 2 VH" in decision.reason
    assert decision.polarisations == ("VV", "VH")


def test_polarisation_metadata_and_db_description_are_sar(tmp_path):
    decibels = -15.0 + intensity_bands(1)
    dataset = sar_raster(tmp_path / "vh_db.tif", decibels, descriptions=("Sigma0 dB",),
                         band_metadata=({"POLARISATION": "VH"},))
    decision = detect_sensor(dataset)
    assert decision.sensor == "sar"
    assert "band 1 VH" in decision.reason
    assert decision.polarisations == ("VH",)


def test_dataset_polarisation_metadata_names_the_single_band(tmp_path):
    dataset = sar_raster(tmp_path / "hh.tif", intensity_bands(1), metadata={"POLARIZATION": "hh"})
    decision = detect_sensor(dataset)
    assert decision.sensor == "sar" and decision.polarisations == ("HH",)
    assert "band 1 HH" in decision.reason


def test_sentinel1_mission_metadata_is_sar(tmp_path):
    dataset = sar_raster(tmp_path / "s1.tif", intensity_bands(2), metadata={"MISSION": "SENTINEL-1A"})
    decision = detect_sensor(dataset)
    assert decision.sensor == "sar"
    assert "MISSION=SENTINEL-1A" in decision.reason
    assert decision.polarisations == (None, None)


def test_sentinel1_product_name_gives_mission_and_product_type(tmp_path):
    name = "S1A_IW_GRDH_1SDV_20230101T054321_20230101T054346_046571_0594C2_1A2B"
    dataset = sar_raster(tmp_path / "s1.tif", intensity_bands(1), metadata={"PRODUCT_NAME": name})
    decision = detect_sensor(dataset)
    assert decision.sensor == "sar"
    assert "PRODUCT_NAME=S1A_IW_GRDH" in decision.reason and "product type GRDH" in decision.reason


@pytest.mark.parametrize("bands,count", [
    (intensity_bands(4), "4 bands"),                                          # multispectral reflectance
    (np.full((1, 12, 16), 900, np.uint16), "1 band"),                         # panchromatic
    (np.full((4, 12, 16), 900, np.uint16), "4 bands"),                        # 16-bit optical, or a stripped GRD
    (np.full((3, 12, 16), 90, np.uint8), "3 bands"),                          # 8-bit RGB
])
def test_rasters_without_evidence_are_optical(tmp_path, bands, count):
    path = write_geotiff(tmp_path / "optical.tif", bands)
    decision = detect_sensor(open_raster(path))
    assert decision.sensor == "optical"
    type_name = gdal.GetDataTypeName(gdal_array.NumericTypeCodeToGDALTypeCode(bands.dtype))
    assert decision.reason == OPTICAL_REASON.format(type=type_name, count=count)
    assert decision.polarisations == (None,) * bands.shape[0]


def test_polarisation_letters_inside_words_are_no_evidence(tmp_path):
    dataset = sar_raster(tmp_path / "lookalike.tif", intensity_bands(3), descriptions=("HVAC", "VVV", "Visible"),
                         metadata={"TIME_FORMAT": "HH:MM:SS", "NOTE": "S1A"})
    decision = detect_sensor(dataset)
    assert decision.sensor == "optical", decision.reason
    assert decision.polarisations == (None, None, None)


# polarisation choice


@pytest.fixture
def dual_pol(tmp_path):
    dataset = sar_raster(tmp_path / "dual.tif", intensity_bands(2), descriptions=("Sigma0_VH", "Sigma0_VV"))
    return detect_sensor(dataset), dataset


def test_default_polarisation_is_vv(dual_pol):
    band, note = choose_polarisation(*dual_pol)
    assert band == 2
    assert "band 2 (VV)" in note and "default" in note


def test_requested_polarisation_ignores_case(dual_pol):
    band, note = choose_polarisation(*dual_pol, requested="vh")
    assert band == 1
    assert "band 1 (VH)" in note


def test_absent_polarisation_lists_the_available_ones(dual_pol):
    with pytest.raises(RasterInputError, match=r"no HH band: available polarisations VH \(band 1\), VV \(band 2\)"):
        choose_polarisation(*dual_pol, requested="HH")


def test_band_number_selects_that_band(dual_pol):
    assert choose_polarisation(*dual_pol, requested="2")[0] == 2
    with pytest.raises(RasterInputError, match="band 3 does not exist"):
        choose_polarisation(*dual_pol, requested="3")
    with pytest.raises(RasterInputError, match="neither a polarisation"):
        choose_polarisation(*dual_pol, requested="XY")


def test_unnamed_bands_default_to_band_1(tmp_path):
    dataset = sar_raster(tmp_path / "slc.tif", complex_bands(2))
    band, note = choose_polarisation(detect_sensor(dataset), dataset)
    assert band == 1
    assert "no band names its polarisation" in note


def test_default_without_vv_is_band_1_and_lists_the_others(tmp_path):
    dataset = sar_raster(tmp_path / "hh_hv.tif", intensity_bands(2), band_metadata=({"POLARISATION": "HH"},
                                                                                    {"POLARISATION": "HV"}))
    band, note = choose_polarisation(detect_sensor(dataset), dataset)
    assert band == 1
    assert "band 1 (HH) used: no band is named VV (available: HH (band 1), HV (band 2))" in note


# decibels


def test_to_decibels_on_each_scale():
    assert to_decibels(np.array([3 + 4j]), "complex")[0] == pytest.approx(10 * np.log10(25.0))
    assert to_decibels(np.array([3 + 4j]), "complex")[0] == pytest.approx(13.979400086720377)
    assert to_decibels(np.array([10.0]), "amplitude")[0] == pytest.approx(20.0)
    assert to_decibels(np.array([100.0]), "intensity")[0] == pytest.approx(20.0)
    assert to_decibels(np.array([1000], np.uint16), "amplitude")[0] == pytest.approx(60.0)
    db = np.array([-17.25, 0.0, 4.5], np.float32)
    assert np.array_equal(to_decibels(db, "db"), db.astype(np.float64))


def test_to_decibels_invalid_values_give_nan():
    assert np.isnan(to_decibels(np.array([0.0, -1.0, np.nan, np.inf]), "intensity")).all()
    assert np.isnan(to_decibels(np.array([0.0, -3.0, np.nan]), "amplitude")).all()
    assert np.isnan(to_decibels(np.array([0j, complex(np.nan, 1)]), "complex")).all()
    assert np.isnan(to_decibels(np.array([np.nan, -np.inf]), "db")).all()
    with pytest.raises(ValueError):
        to_decibels(np.array([1 + 1j]), "intensity")
    with pytest.raises(ValueError):
        to_decibels(np.array([1.0]), "linear")


# scale


def guess(dataset, band=1):
    return guess_scale(dataset, band, sample_values(dataset, band))


def test_guess_scale(tmp_path):
    assert guess(sar_raster(tmp_path / "c.tif", complex_bands(1))) == "complex"
    positive = intensity_bands(1)
    assert guess(sar_raster(tmp_path / "d.tif", positive, descriptions=("Sigma0_VV_dB",))) == "db"
    assert guess(sar_raster(tmp_path / "n.tif", -25.0 + 20.0 * positive.clip(0, 1))) == "db"
    assert guess(sar_raster(tmp_path / "i.tif", positive, band_metadata=({"CALIBRATION": "sigma0"},))) == "intensity"
    assert guess(sar_raster(tmp_path / "a.tif", positive, descriptions=("Amplitude_VH",))) == "amplitude"
    assert guess(sar_raster(tmp_path / "f.tif", positive)) == "intensity"
    assert guess(sar_raster(tmp_path / "u.tif", np.full((1, 12, 16), 120, np.uint16))) == "amplitude"


def test_negative_values_far_outside_the_db_range_are_not_db(tmp_path):
    values = np.full((1, 12, 16), -5000.0, np.float32)
    assert guess(sar_raster(tmp_path / "far.tif", values)) == "intensity"


# stretch


def test_stretch_percentiles_match_numpy(tmp_path):
    values = intensity_bands(1, 40, 50)
    values[0, :3, :] = -9999.0
    values[0, 5, 7] = np.nan
    values[0, 6, 8] = 0.0
    dataset = sar_raster(tmp_path / "sigma0.tif", values, descriptions=("Sigma0_VV",), nodata=-9999.0)
    stretch = sar_stretch(dataset, 1, "intensity")
    usable = values[0][(values[0] > 0) & np.isfinite(values[0])].astype(np.float64)
    expected = np.percentile(10.0 * np.log10(usable), [2.0, 98.0])
    assert (stretch.low, stretch.high) == pytest.approx(tuple(expected), abs=1e-9)
    assert (stretch.band, stretch.polarisation, stretch.scale) == (1, "VV", "intensity")
    assert "band 1 (VV)" in stretch.describe() and "intensity" in stretch.describe()
    assert f"{stretch.low:.2f}..{stretch.high:.2f} dB" in stretch.describe()


def test_stretch_of_complex_band_matches_numpy(tmp_path):
    values = complex_bands(1, 30, 20)
    stretch = sar_stretch(sar_raster(tmp_path / "slc.tif", values), 1, "complex")
    expected = np.percentile(10.0 * np.log10(np.abs(values[0].astype(np.complex128)) ** 2), [2.0, 98.0])
    assert (stretch.low, stretch.high) == pytest.approx(tuple(expected), abs=1e-9)


def test_stretch_clips_and_zeroes_nan():
    stretch = SarStretch("db", -20.0, 0.0)
    out = stretch.apply(np.array([-30.0, -20.0, -10.0, 0.0, 10.0, np.nan]))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255, 0]
    assert SarStretch("intensity", -20.0, 0.0).apply(np.array([0.01, 1.0, 0.0])).tolist() == [0, 255, 0]


@pytest.mark.parametrize("sample", [1024, 16])
def test_stretch_is_the_same_for_every_block(tmp_path, sample):
    values = intensity_bands(1, 97, 61, seed=3)
    dataset = sar_raster(tmp_path / "grd.tif", values)
    stretch = sar_stretch(dataset, 1, "intensity", sample=sample)
    band = dataset.GetRasterBand(1)
    whole = stretch.apply(band.ReadAsArray())
    edges = [0, 1, 8, 31, 32, 64, 90, 97]
    blocks = [stretch.apply(band.ReadAsArray(0, row0, 61, row1 - row0))
              for row0, row1 in zip(edges[:-1], edges[1:], strict=True)]
    assert np.concatenate(blocks).tobytes() == whole.tobytes()
    assert 0 < np.count_nonzero(whole == 0) < whole.size and 0 < np.count_nonzero(whole == 255) < whole.size


def test_replicate_gives_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = SarStretch.replicate(gray)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], gray)


def test_raster_without_valid_pixel_is_refused(tmp_path):
    nodata = sar_raster(tmp_path / "empty.tif", np.full((1, 8, 8), -9999.0, np.float32), nodata=-9999.0)
    with pytest.raises(RasterInputError, match="no valid pixels"):
        sar_stretch(nodata, 1, "intensity")
    zeros = sar_raster(tmp_path / "zeros.tif", np.zeros((1, 8, 8), np.uint16))
    with pytest.raises(RasterInputError, match="no valid pixels"):
        sar_stretch(zeros, 1, "amplitude")
