"""What vectorize and evaluate accept as a classified raster (gis/raster.py check_class_raster, read_class_table)."""

import time

import numpy as np
import pytest
from osgeo import gdal, gdal_array
from rasters import scene_bands, srs_wkt, write_geotiff

from segearth_qgis.core.gis.raster import RasterInputError, check_class_raster, read_class_table
from segearth_qgis.core.gis.vectorize import polygonize

gdal.UseExceptions()

HINT = "give the classified raster segment wrote (8-bit, one class per value)"
RGB_SENTENCE = "looks like an RGB image, not a classified raster: give the classified output of segment"


def classes(path, labels, names=None, colors=None, nodata=255):
    """A one-band class raster of ``labels`` (any integer type) with optional category names and colour table, set
    at creation as segment writes them."""
    labels = np.asarray(labels)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), labels.shape[1], labels.shape[0], 1,
                                                   gdal_array.NumericTypeCodeToGDALTypeCode(labels.dtype))
    dataset.SetGeoTransform((500000.0, 0.5, 0.0, 5600000.0, 0.0, -0.5))
    dataset.SetProjection(srs_wkt(25832))
    band = dataset.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    if colors:
        table = gdal.ColorTable()
        for index, color in enumerate(colors):
            table.SetColorEntry(index, (*color, 255))
        band.SetRasterColorTable(table)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    if names:
        band.SetCategoryNames(list(names))
    band.WriteArray(labels)  # after the colour table: GDAL 3.10 refuses the photometric tag once pixels are written
    dataset = None
    return str(path)


def test_uint8_class_raster_gives_its_category_names_and_colours(tmp_path):
    labels = np.array([[0, 1, 2, 255]] * 4, np.uint8)
    path = classes(tmp_path / "classes.tif", labels, names=["field", "house", "road"],
                   colors=[(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    assert check_class_raster(path) == ["field", "house", "road"]
    assert read_class_table(path) == (["field", "house", "road"], [(10, 20, 30), (40, 50, 60), (70, 80, 90)])


def test_without_category_names_the_names_run_to_the_largest_value(tmp_path):
    path = classes(tmp_path / "classes.tif", np.array([[0, 3], [3, 65535]], np.uint16), nodata=65535)
    names, colors = read_class_table(path)
    assert names == ["class 0", "class 1", "class 2", "class 3"]
    assert len(colors) == 4 and len(set(colors)) == 4


def test_float_raster_with_huge_values_is_refused_without_building_names(tmp_path):
    values = np.full((1, 64, 64), 3.0e12, np.float32)
    path = write_geotiff(tmp_path / "float.tif", values)
    start = time.perf_counter()
    with pytest.raises(RasterInputError) as raised:
        read_class_table(path)
    assert time.perf_counter() - start < 2.0
    assert str(raised.value) == f"{path} band 1 holds Float32 values, not class ids: {HINT}"
    with pytest.raises(RasterInputError, match="holds CFloat64 values, not class ids"):
        check_class_raster(write_geotiff(tmp_path / "complex.tif", np.ones((1, 8, 8), np.complex128)))


def test_integer_values_past_254_are_refused_with_the_number(tmp_path):
    path = classes(tmp_path / "wide.tif", np.array([[0, 7], [70000, 5]], np.int32), nodata=None)
    start = time.perf_counter()
    with pytest.raises(RasterInputError) as raised:
        read_class_table(path)
    assert time.perf_counter() - start < 2.0
    assert str(raised.value) == (f"{path} band 1 holds values 0 to 70000, not class ids 0 to 254 (at most 255 "
                                 f"classes): {HINT}")
    negative = classes(tmp_path / "negative.tif", np.array([[-3, 1]], np.int16), nodata=None)
    with pytest.raises(RasterInputError, match="holds values -3 to 1, not class ids 0 to 254"):
        check_class_raster(negative)
    many = classes(tmp_path / "many.tif", np.array([[0, 1]], np.uint16), names=[f"c{i}" for i in range(300)],
                   nodata=None)
    with pytest.raises(RasterInputError, match="has 300 category names, more than the 255 classes"):
        check_class_raster(many)


@pytest.mark.parametrize("interpretations", [
    (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand),
    (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand)])
def test_rgb_image_is_refused(tmp_path, interpretations):
    bands = scene_bands(16, 16)
    if len(interpretations) == 4:
        bands = np.concatenate([bands, np.full((1, 16, 16), 255, np.uint8)])
    path = write_geotiff(tmp_path / "photo.tif", bands, color_interp=interpretations)
    with pytest.raises(RasterInputError) as raised:
        read_class_table(path)
    assert str(raised.value) == f"{path} {RGB_SENTENCE}"


def test_a_multiband_raster_that_is_not_rgb_is_read_by_band(tmp_path):
    bands = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 2, np.uint8), np.ones((4, 4), np.uint8)])
    path = write_geotiff(tmp_path / "stack.tif", bands, color_interp=[gdal.GCI_GrayIndex] * 3)
    assert check_class_raster(path, band=2) == ["class 0", "class 1", "class 2"]


def test_all_nodata_is_refused(tmp_path):
    path = classes(tmp_path / "empty.tif", np.full((8, 8), 255, np.uint8), names=["field", "house"])
    with pytest.raises(RasterInputError) as raised:
        check_class_raster(path)
    assert str(raised.value) == (f"{path} has no valid pixels (all nodata): give a classified raster with classes in "
                                 "it, or check its nodata value")
    unnamed = classes(tmp_path / "unnamed.tif", np.full((8, 8), 255, np.uint8))
    with pytest.raises(RasterInputError, match="has no valid pixels"):
        check_class_raster(unnamed)


def test_one_valid_pixel_among_nodata_is_enough(tmp_path):
    labels = np.full((300, 300), 255, np.uint8)
    labels[299, 299] = 1          # GDAL's sampled estimate may miss it; the exact pass does not
    path = classes(tmp_path / "sparse.tif", labels, names=["field", "house"])
    assert check_class_raster(path) == ["field", "house"]


def test_band_out_of_range_is_refused(tmp_path):
    path = classes(tmp_path / "classes.tif", np.zeros((4, 4), np.uint8), names=["field"])
    for band in (0, 2):
        with pytest.raises(RasterInputError) as raised:
            check_class_raster(path, band)
        assert str(raised.value) == f"band {band} does not exist: {path} has 1 band(s), numbered from 1"


def test_polygonize_checks_before_any_work(tmp_path):
    path = write_geotiff(tmp_path / "float.tif", np.full((1, 8, 8), 1.5, np.float32))
    with pytest.raises(RasterInputError, match="holds Float32 values, not class ids"):
        polygonize(path, tmp_path / "polygons.gpkg")
    rgb = write_geotiff(tmp_path / "photo.tif", scene_bands(8, 8),
                        color_interp=(gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand))
    with pytest.raises(RasterInputError, match="does not exist: .* has 3 band"):
        polygonize(rgb, tmp_path / "polygons.gpkg", band=4)
    empty = classes(tmp_path / "empty.tif", np.full((8, 8), 255, np.uint8))
    with pytest.raises(RasterInputError, match="no valid pixels"):
        polygonize(empty, tmp_path / "polygons.gpkg")
    assert not (tmp_path / "polygons.gpkg").exists()
