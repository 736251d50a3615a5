"""Ground units (gis/geo.py) and classified rasters to polygons (gis/vectorize.py) on small GeoTIFFs made here."""

import hashlib
import math

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from segearth_qgis.core.common.feedback import CallbackFeedback, Cancelled
from segearth_qgis.core.gis.geo import AreaMeter, pixel_size_metres
from segearth_qgis.core.gis.vectorize import polygonize

gdal.UseExceptions()

NAMES = ["background", "building", "road"]
UTM_TRANSFORM = (500000.0, 0.5, 0.0, 5600000.0, 0.0, -0.5)
DEG = 1e-4
GEO_TRANSFORM = (10.0, DEG, 0.0, 60.0 + 8 * DEG, 0.0, -DEG)   # centred near 60 N
METRES_PER_DEGREE = 111_400.0


def wkt(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_classes(path, labels, epsg=32632, geotransform=UTM_TRANSFORM, names=NAMES, nodata=255):
    labels = np.asarray(labels, np.uint8)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), labels.shape[1], labels.shape[0], 1, gdal.GDT_Byte)
    dataset.SetGeoTransform(geotransform)
    if epsg:
        dataset.SetProjection(wkt(epsg))
    band = dataset.GetRasterBand(1)
    band.WriteArray(labels)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    if names:
        band.SetCategoryNames(list(names))
    del dataset
    return str(path)


def sample_labels():
    """16 x 12: three classes with holes and islands, and a nodata block."""
    labels = np.zeros((16, 12), np.uint8)
    labels[2:7, 2:9] = 1
    labels[4, 4] = 0                      # a hole in the building
    labels[9:16, 5:7] = 2
    labels[10, 0] = 1                     # a one-pixel island
    labels[12:16, 8:12] = 255             # nodata
    labels[0:2, 10:12] = 255
    return labels


def read_layer(path):
    dataset = ogr.Open(str(path))
    assert dataset is not None, f"{path} cannot be read back"
    layer = dataset.GetLayer(0)
    features = [(f.GetField("class_id"), f.GetField("class_name"), f.GetField("area_m2"), f.GetGeometryRef().Clone())
                for f in layer]
    definition = layer.GetLayerDefn()
    fields = {definition.GetFieldDefn(i).GetName(): definition.GetFieldDefn(i).GetType()
              for i in range(definition.GetFieldCount())}
    srs = layer.GetSpatialRef()
    return dataset, features, fields, srs


def same_crs(srs, epsg):
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(epsg)
    return bool(srs.IsSame(reference, ["IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES"]))


def per_class(features, index):
    totals = {}
    for feature in features:
        totals[feature[0]] = totals.get(feature[0], 0.0) + feature[index]
    return totals


def vertex_count(geometry):
    return sum(geometry.GetGeometryRef(i).GetPointCount() for i in range(geometry.GetGeometryCount()))


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------- ground units


def test_pixel_size_geographic_at_60_north():
    x, y = pixel_size_metres(GEO_TRANSFORM, wkt(4326), 16, 16)
    assert x == pytest.approx(DEG * METRES_PER_DEGREE * math.cos(math.radians(60.0)), rel=0.005)
    assert y == pytest.approx(DEG * METRES_PER_DEGREE, rel=0.005)


def test_pixel_size_projected_in_metres_and_feet():
    assert pixel_size_metres(UTM_TRANSFORM, wkt(32632), 100, 100) == (0.5, 0.5)
    x, y = pixel_size_metres((980000.0, 2.0, 0.0, 200000.0, 0.0, -3.0), wkt(2263), 100, 100)   # US survey feet
    assert x == pytest.approx(0.3048 * 2.0, rel=1e-5)
    assert y == pytest.approx(0.3048 * 3.0, rel=1e-5)


def test_pixel_size_web_mercator_is_ground_metres():
    """Web Mercator metres at 60 N are half a metre on the ground: its units are not taken at face value."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    geographic = osr.SpatialReference()
    geographic.ImportFromEPSG(4326)
    geographic.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x0, y0, _ = osr.CoordinateTransformation(geographic, srs).TransformPoint(10.0, 60.0)
    x, y = pixel_size_metres((x0, 1.0, 0.0, y0, 0.0, -1.0), srs.ExportToWkt(), 100, 100)
    assert x == pytest.approx(0.5, rel=0.005) and y == pytest.approx(0.5, rel=0.005)
    meter = AreaMeter(srs.ExportToWkt(), (x0, 1.0, 0.0, y0, 0.0, -1.0), 100, 100)
    assert meter.row_pixel_areas(0, 1)[0] == pytest.approx(0.25, rel=0.01)


def test_no_crs_is_a_clear_error():
    with pytest.raises(ValueError, match="Layer Properties > Source"):
        pixel_size_metres(UTM_TRANSFORM, "", 10, 10)
    with pytest.raises(ValueError, match="Layer Properties > Source"):
        AreaMeter("", UTM_TRANSFORM, 10, 10)


def block(geotransform, col0, row0, col1, row1):
    """The polygon covering whole pixels [col0, col1) x [row0, row1)."""
    x0, dx, _, y0, _, dy = geotransform
    xa, xb, ya, yb = x0 + col0 * dx, x0 + col1 * dx, y0 + row0 * dy, y0 + row1 * dy
    return ogr.CreateGeometryFromWkt(f"POLYGON(({xa} {ya},{xb} {ya},{xb} {yb},{xa} {yb},{xa} {ya}))")


def test_area_meter_pixels_and_polygons_agree_geographic():
    meter = AreaMeter(wkt(4326), GEO_TRANSFORM, 400, 300)
    rows = meter.row_pixel_areas(0, 300)
    assert rows.dtype == np.float64 and rows.shape == (300,)
    assert np.all(np.diff(rows) > 0)                              # pixels grow towards the equator
    expected = DEG * METRES_PER_DEGREE * math.cos(math.radians(60.0)) * DEG * METRES_PER_DEGREE
    assert rows[150] == pytest.approx(expected, rel=0.01)
    polygon = block(GEO_TRANSFORM, 20, 10, 370, 290)
    assert meter.geometry_m2(polygon) == pytest.approx(350 * rows[10:290].sum(), rel=1e-6)
    assert polygon.GetArea() == pytest.approx(350 * 280 * DEG * DEG)   # the argument is not changed


def test_area_meter_pixels_and_polygons_agree_utm():
    meter = AreaMeter(wkt(32632), UTM_TRANSFORM, 400, 300)
    assert meter.planar
    np.testing.assert_array_equal(meter.row_pixel_areas(5, 9), np.full(4, 0.25))
    assert meter.geometry_m2(block(UTM_TRANSFORM, 3, 4, 103, 54)) == pytest.approx(100 * 50 * 0.25, rel=1e-12)


# ---------------------------------------------------------------- polygons


def test_fields_names_crs_and_areas_utm(tmp_path):
    labels = sample_labels()
    raster = write_classes(tmp_path / "classes.tif", labels)
    result = polygonize(raster, tmp_path / "polygons.gpkg")
    _, features, fields, srs = read_layer(tmp_path / "polygons.gpkg")
    assert fields == {"class_id": ogr.OFTInteger, "class_name": ogr.OFTString, "area_m2": ogr.OFTReal}
    assert result["features"] == len(features) == 5      # background, its hole, building, its island, road
    assert {(f[0], f[1]) for f in features} == {(0, "background"), (1, "building"), (2, "road")}
    assert all(f[0] != 255 for f in features)
    expected = {c: float((labels == c).sum()) * 0.25 for c in (0, 1, 2)}
    areas = per_class(features, 2)
    for c in (0, 1, 2):
        assert areas[c] == pytest.approx(expected[c], rel=1e-6)
        assert result["area_m2"][c] == pytest.approx(expected[c], rel=1e-6)
        assert sum(f[3].GetArea() for f in features if f[0] == c) == pytest.approx(expected[c], rel=1e-9)
    assert same_crs(srs, 32632)


def test_nodata_gives_no_polygon(tmp_path):
    labels = sample_labels()
    raster = write_classes(tmp_path / "classes.tif", labels)
    polygonize(raster, tmp_path / "polygons.gpkg")
    _, features, _, _ = read_layer(tmp_path / "polygons.gpkg")
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for feature in features:
        union.AddGeometry(feature[3])
    union = union.UnionCascaded()
    assert union.GetArea() == pytest.approx((labels != 255).sum() * 0.25)
    x0, dx, _, y0, _, dy = UTM_TRANSFORM
    for row, col in zip(*np.nonzero(labels == 255), strict=True):
        centre = ogr.CreateGeometryFromWkt(f"POINT({x0 + (col + 0.5) * dx} {y0 + (row + 0.5) * dy})")
        assert not union.Contains(centre)


def test_class_names_argument_category_names_and_fallback(tmp_path):
    labels = sample_labels()
    raster = write_classes(tmp_path / "classes.tif", labels, names=["ground", "roof"])   # no name for class 2
    polygonize(raster, tmp_path / "a.gpkg")
    assert {(f[0], f[1]) for f in read_layer(tmp_path / "a.gpkg")[1]} == {(0, "ground"), (1, "roof"),
                                                                           (2, "class 2")}
    polygonize(raster, tmp_path / "b.gpkg", class_names=["soil", "house", "street"])
    assert {(f[0], f[1]) for f in read_layer(tmp_path / "b.gpkg")[1]} == {(0, "soil"), (1, "house"),
                                                                           (2, "street")}
    unnamed = write_classes(tmp_path / "unnamed.tif", labels, names=None)
    polygonize(unnamed, tmp_path / "c.gpkg")
    assert {f[1] for f in read_layer(tmp_path / "c.gpkg")[1]} == {"class 0", "class 1", "class 2"}


def test_geographic_areas_match_pixel_counts(tmp_path):
    labels = sample_labels()
    raster = write_classes(tmp_path / "classes.tif", labels, epsg=4326, geotransform=GEO_TRANSFORM)
    result = polygonize(raster, tmp_path / "polygons.gpkg")
    _, features, _, srs = read_layer(tmp_path / "polygons.gpkg")
    meter = AreaMeter(wkt(4326), GEO_TRANSFORM, labels.shape[1], labels.shape[0])
    rows = meter.row_pixel_areas(0, labels.shape[0])
    approximate = DEG * METRES_PER_DEGREE * math.cos(math.radians(60.0)) * DEG * METRES_PER_DEGREE
    areas = per_class(features, 2)
    for c in (0, 1, 2):
        expected = float(((labels == c).sum(axis=1) * rows).sum())
        assert areas[c] == pytest.approx(expected, rel=1e-6)
        assert result["area_m2"][c] == pytest.approx(expected, rel=1e-6)
        assert areas[c] == pytest.approx((labels == c).sum() * approximate, rel=0.01)
    assert same_crs(srs, 4326)


def test_min_area_merges_a_one_pixel_island(tmp_path):
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 6:] = 2
    labels[4, 2] = 1                                         # a one-pixel building inside the background
    labels[0, 0] = 255
    raster = write_classes(tmp_path / "classes.tif", labels)
    before = md5(raster)
    plain = polygonize(raster, tmp_path / "plain.gpkg")
    sieved = polygonize(raster, tmp_path / "sieved.gpkg", min_area_m2=0.5)     # 2 pixels
    assert plain["features"] == 3 and sieved["features"] == 2
    assert 1 not in sieved["area_m2"]
    assert sum(sieved["area_m2"].values()) == pytest.approx(sum(plain["area_m2"].values()))
    assert sum(plain["area_m2"].values()) == pytest.approx(99 * 0.25)
    assert sieved["area_m2"][0] == pytest.approx(plain["area_m2"][0] + 0.25)
    assert md5(raster) == before                             # the input is never modified
    kept = polygonize(raster, tmp_path / "kept.gpkg", min_area_m2=0.25)       # exactly one pixel: kept
    assert kept["features"] == 3


def test_connectedness(tmp_path):
    labels = np.zeros((6, 6), np.uint8)
    labels[1, 1] = labels[2, 2] = labels[3, 3] = 1
    raster = write_classes(tmp_path / "classes.tif", labels)
    four = polygonize(raster, tmp_path / "four.gpkg")
    eight = polygonize(raster, tmp_path / "eight.gpkg", connectedness=8)
    assert len([f for f in read_layer(tmp_path / "four.gpkg")[1] if f[0] == 1]) == 3
    assert len([f for f in read_layer(tmp_path / "eight.gpkg")[1] if f[0] == 1]) == 1
    assert four["area_m2"][1] == pytest.approx(eight["area_m2"][1]) == pytest.approx(0.75)


def test_simplify_reduces_vertices(tmp_path):
    rows, cols = np.indices((40, 40))
    labels = (cols > rows).astype(np.uint8)                  # a staircase diagonal
    raster = write_classes(tmp_path / "classes.tif", labels)
    polygonize(raster, tmp_path / "raw.gpkg")
    polygonize(raster, tmp_path / "smooth.gpkg", simplify=1.0)   # 2 pixels
    raw = {f[0]: f for f in read_layer(tmp_path / "raw.gpkg")[1]}
    smooth = {f[0]: f for f in read_layer(tmp_path / "smooth.gpkg")[1]}
    for c in (0, 1):
        assert vertex_count(smooth[c][3]) < vertex_count(raw[c][3]) / 4
        assert smooth[c][3].IsValid()
        assert smooth[c][2] == pytest.approx(smooth[c][3].GetArea())        # the area is the written polygon's
        assert smooth[c][2] == pytest.approx(raw[c][2], rel=0.1)


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".json", ".fgb"])
def test_formats_and_replacing(tmp_path, suffix):
    labels = sample_labels()
    raster = write_classes(tmp_path / "classes.tif", labels)
    output = tmp_path / "out" / f"polygons{suffix}"
    first = polygonize(raster, output, class_names=["terre", "bâtiment", "route"], layer_name="classes")
    second = polygonize(raster, output, min_area_m2=0.5)                  # replaces the first
    assert (first["features"], second["features"]) == (5, 3)              # the hole and the island merged
    dataset, features, fields, srs = read_layer(output)
    assert len(features) == second["features"]
    assert set(fields) == {"class_id", "class_name", "area_m2"}
    assert fields["class_id"] in (ogr.OFTInteger, ogr.OFTInteger64) and fields["area_m2"] == ogr.OFTReal
    assert {f[1] for f in features} == {"background", "building", "road"}
    assert same_crs(srs, 32632)
    del dataset
    leftovers = [p.name for p in output.parent.iterdir() if "partial" in p.name]
    assert leftovers == []
    if suffix == ".shp":
        assert {p.suffix for p in output.parent.iterdir()} >= {".shp", ".shx", ".dbf", ".prj", ".cpg"}


def test_layer_name(tmp_path):
    raster = write_classes(tmp_path / "classes.tif", sample_labels())
    result = polygonize(raster, tmp_path / "polygons.gpkg", layer_name="land cover")
    assert result["layer"] == "land cover"
    assert ogr.Open(str(tmp_path / "polygons.gpkg")).GetLayer(0).GetName() == "land cover"


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".fgb"])
@pytest.mark.parametrize("min_area", [0.0, 0.5])
def test_cancel_at_any_point_leaves_nothing(tmp_path, suffix, min_area):
    labels = np.random.default_rng(0).integers(0, 3, (40, 40)).astype(np.uint8)   # many small regions
    raster = write_classes(tmp_path / "classes.tif", labels)
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / f"polygons{suffix}"
    existing = folder / "existing.gpkg"
    polygonize(raster, existing)
    existing_files = {p.name: md5(p) for p in folder.iterdir()}
    completed = False
    for stop_at in range(1, 200):
        calls = []

        def cancelled(stop_at=stop_at, calls=calls):
            calls.append(1)
            return len(calls) >= stop_at

        try:
            polygonize(raster, output, min_area_m2=min_area, feedback=CallbackFeedback(cancelled=cancelled))
            completed = True
            break
        except Cancelled:
            assert {p.name: md5(p) for p in folder.iterdir()} == existing_files, f"stopped at check {stop_at}"
    assert completed and stop_at > 3                    # stopped at every check of every stage before finishing
    assert output.exists()


def test_cancel_keeps_an_existing_output(tmp_path):
    raster = write_classes(tmp_path / "classes.tif", sample_labels())
    output = tmp_path / "polygons.shp"
    polygonize(raster, output)
    before = {p.name: md5(p) for p in tmp_path.iterdir()}
    calls = []

    def cancel_late():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        polygonize(raster, output, simplify=0.5, feedback=CallbackFeedback(cancelled=cancel_late))
    assert {p.name: md5(p) for p in tmp_path.iterdir()} == before


def test_progress_runs_to_one(tmp_path):
    raster = write_classes(tmp_path / "classes.tif", sample_labels())
    seen = []
    polygonize(raster, tmp_path / "polygons.fgb", min_area_m2=0.5, feedback=CallbackFeedback(progress=seen.append))
    assert seen and seen[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)


def test_errors(tmp_path):
    raster = write_classes(tmp_path / "classes.tif", sample_labels())
    with pytest.raises(ValueError, match=r"\.gpkg, \.shp, \.geojson, \.json, \.fgb"):
        polygonize(raster, tmp_path / "polygons.kml")
    assert not (tmp_path / "polygons.kml").exists()
    no_crs = write_classes(tmp_path / "no_crs.tif", sample_labels(), epsg=None)
    with pytest.raises(ValueError, match="Layer Properties > Source"):
        polygonize(no_crs, tmp_path / "polygons.gpkg")
    with pytest.raises(ValueError, match="band 2"):
        polygonize(raster, tmp_path / "polygons.gpkg", band=2)
    with pytest.raises(ValueError, match="connectedness"):
        polygonize(raster, tmp_path / "polygons.gpkg", connectedness=6)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".aux.xml")) == ["classes.tif",
                                                                                              "no_crs.tif"]
