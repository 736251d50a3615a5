"""The pipeline on the inputs a hostile trial found: each is read right or refused before any work, in one sentence
that names the file or parameter and says what to do, and nothing is written."""

import hashlib
import re

import numpy as np
import pytest
from osgeo import gdal
from rasters import read_band, scene_bands, write_geotiff

from segearth_qgis.core import Vocabulary
from segearth_qgis.core.common.checks import ParameterError
from segearth_qgis.core.common.outputs import OutputPathError
from segearth_qgis.core.gis.raster import RasterInputError
from segearth_qgis.core.gis.source import ProcessingSource
from segearth_qgis.core.pipeline import (
    MAX_WINDOWS,
    SegmentOptions,
    SegmentOutputs,
    check_request,
    resolve_options,
    segment_raster,
)

CLASSES = "building,roof\nroad\nwater"


def options(**extra):
    return SegmentOptions(Vocabulary.parse(extra.pop("classes", CLASSES)), **extra)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture()
def scene(tmp_path):
    return write_geotiff(tmp_path / "scene.tif", scene_bands(64, 80, seed=5))


def test_outputs_onto_the_input_or_each_other_are_refused_before_any_work(scene, tmp_path):
    before = digest(scene)
    for outputs, wrong in [(SegmentOutputs(scene), "OUTPUT"),
                           (SegmentOutputs(str(tmp_path / "c.tif"), areas_csv=scene), "OUTPUT_AREAS"),
                           (SegmentOutputs(str(tmp_path / "c.tif"), confidence=str(tmp_path / "c.tif")),
                            "OUTPUT_CONFIDENCE")]:
        with pytest.raises(OutputPathError, match=f"^{wrong} .* would overwrite the (input INPUT|output OUTPUT)"):
            check_request(scene, outputs, options())
    assert digest(scene) == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_a_bad_vector_name_and_an_overflowing_tolerance_fail_before_the_first_window(scene, tmp_path):
    with pytest.raises(ValueError, match=r"cannot write polygons to .*p\.txt: the file name must end in one of"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif"), vector=str(tmp_path / "p.txt")), options())
    for simplify, message in [(float("inf"), "SIMPLIFY is inf: give a finite number"),
                              (1e300, "SIMPLIFY 1e+300 is larger than the whole raster")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_request(scene, SegmentOutputs(str(tmp_path / "c.tif"), vector=str(tmp_path / "p.gpkg"),
                                                simplify=simplify), options())
    with pytest.raises(RasterInputError, match="raster outputs are GeoTIFF"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.png")), options())


@pytest.mark.parametrize("name", ["GBA_LAMBDA", "THRESHOLD", "RESOLUTION"])
def test_non_finite_numbers_never_reach_the_model(scene, name):
    keyword = {"GBA_LAMBDA": "gba_lambda", "THRESHOLD": "threshold", "RESOLUTION": "resolution"}[name]
    with pytest.raises(ParameterError, match=f"^{name} is nan: give a finite number$"):
        resolve_options(classes=CLASSES, input_path=scene, **{keyword: float("nan")})


def test_255_classes_fit_and_256_are_refused_counting_the_added_class(scene, tmp_path):
    outputs = SegmentOutputs(str(tmp_path / "c.tif"))
    check_request(scene, outputs, options(classes="\n".join(f"class{i}" for i in range(254))))  # + unclassified
    with pytest.raises(RasterInputError, match=r"256 classes \(255 typed and 'unclassified' .*at most 255 classes"):
        check_request(scene, outputs, options(classes="\n".join(f"class{i}" for i in range(255))))


def test_a_far_too_fine_resolution_is_refused_with_the_numbers_and_the_finest_that_fits(scene, tmp_path,
                                                                                         monkeypatch):
    import segearth_qgis.core.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 ** 40)  # the window count alone decides here
    with pytest.raises(RasterInputError) as refused:
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")), options(resolution=0.0001))
    message = str(refused.value)
    assert "400,000 x 320,000 px processing grid" in message and f"over {MAX_WINDOWS:,} windows" in message
    finest = float(re.search(r"RESOLUTION of at least ([0-9.e+-]+) m", message).group(1))
    assert "ALLOW_LARGE (--allow-large)" in message
    # the finest resolution it names does fit, a tenth finer does not
    check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")), options(resolution=finest))
    with pytest.raises(RasterInputError, match="very large"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")), options(resolution=finest * 0.9))


def test_confirmed_large_runs_are_still_refused_when_memory_cannot_hold_them(scene, tmp_path, monkeypatch):
    import segearth_qgis.core.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 ** 30)
    with pytest.raises(RasterInputError, match=r"more than the 0\.7 GiB that can be used now: choose a RESOLUTION"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")), options(resolution=0.0001, allow_large=True))


def test_a_resolution_leaving_less_than_a_patch_says_so(scene, tmp_path):
    with pytest.raises(RasterInputError, match=r"at RESOLUTION 1000 m the raster becomes a 1 x 1 px grid, smaller "
                                               r"than one 16-px patch .* at most 2 m"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")), options(resolution=1000))


def test_empty_truncated_and_broken_vrt_inputs_are_named_with_what_is_wrong(scene, tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    big = write_geotiff(tmp_path / "big.tif", scene_bands(512, 512, seed=1))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(open(big, "rb").read()[:300_000])
    vrt = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(vrt), [scene]).FlushCache()
    moved = tmp_path / "moved.tif"
    (tmp_path / "scene.tif").rename(moved)
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("hello")
    for path, message in [(empty, r"is empty \(0 bytes\)"), (truncated, "cannot be read to its end"),
                          (vrt, "refers to .*scene.tif, which does not exist: restore that file or rebuild the VRT"),
                          (not_raster, "GDAL cannot read .*notes.tif .*damaged or not a raster"),
                          (tmp_path / "nowhere.tif", "nowhere.tif does not exist: check the path")]:
        with pytest.raises(RasterInputError, match=message):
            check_request(str(path), SegmentOutputs(str(tmp_path / "out.tif")), options())
    assert not (tmp_path / "out.tif").exists()


def test_a_complex_raster_for_the_optical_model_names_the_file_not_a_vsimem_vrt(tmp_path):
    data = (np.random.default_rng(0).normal(size=(1, 40, 40)) * (1 + 1j)).astype(np.complex64)
    path = write_geotiff(tmp_path / "slc.tif", data)
    with pytest.raises(RasterInputError) as refused:
        ProcessingSource(path, sensor="optical")
    assert str(refused.value).startswith(f"{path} has complex (radar) bands") and "/vsimem" not in str(refused.value)


def test_an_rgba_raster_keeps_its_transparent_pixels_out(tmp_path):
    bands = scene_bands(48, 64, seed=2)
    alpha = np.full((1, 48, 64), 255, np.uint8)
    alpha[0, :, :20] = 0
    path = write_geotiff(tmp_path / "rgba.tif", np.concatenate([bands, alpha]), options=["ALPHA=YES"])
    for resolution in (0.0, 1.0):
        source = ProcessingSource(path, resolution=resolution)
        _, valid = source.read(0, source.grid.height)
        native = source.native_valid(0, 48)
        cut = 20 if resolution == 0 else 10  # at 1 m, processing column 10 averages native columns 20 and 21
        assert not native[:, :20].any() and native[:, 20:].all()
        assert not valid[:, :cut].any() and valid[:, cut:].all()
        source.close()


def signed_byte_raster(path, values):
    """Int8 as GDAL stores it: GDT_Int8 from 3.7 on, before that Byte marked PIXELTYPE=SIGNEDBYTE."""
    if hasattr(gdal, "GDT_Int8"):
        return write_geotiff(path, values)
    return write_geotiff(path, values.view(np.uint8), options=["PIXELTYPE=SIGNEDBYTE"])


def test_signed_8_bit_data_reads_as_the_same_values_stored_as_int16(tiny_model, tmp_path):
    values = (scene_bands(60, 72, seed=4).astype(np.int16) - 128).astype(np.int8)
    int8 = signed_byte_raster(tmp_path / "int8.tif", values)
    int16 = write_geotiff(tmp_path / "int16.tif", values.astype(np.int16))
    for resolution in (0.0, 0.8):
        read = [ProcessingSource(p, resolution=resolution).read(0, 10)[0] for p in (int8, int16)]
        assert np.array_equal(read[0], read[1]) and read[0].std() > 10
    labels = []
    for path in (int8, int16):
        out = tmp_path / f"classes-{len(labels)}.tif"
        segment_raster(tiny_model, path, SegmentOutputs(str(out)), options())
        labels.append(read_band(out))
    assert np.array_equal(labels[0], labels[1])


def test_a_palette_image_is_read_through_its_colour_table(tmp_path):
    indices = np.random.default_rng(6).integers(0, 4, (1, 30, 40), dtype=np.uint8)
    path = write_geotiff(tmp_path / "palette.tif", indices, color_interp=[gdal.GCI_PaletteIndex])
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (250, 250, 0)]
    dataset = gdal.Open(path, gdal.GA_Update)
    table = gdal.ColorTable()
    for index, colour in enumerate(colours):
        table.SetColorEntry(index, (*colour, 255))
    dataset.GetRasterBand(1).SetRasterColorTable(table)
    dataset = None
    source = ProcessingSource(path)
    rgb, valid = source.read(0, 30)
    assert np.array_equal(rgb, np.array(colours, np.uint8)[indices[0]]) and valid.all()
    assert any("palette" in note for note in source.notes) and not source.warnings
    source.close()


def test_a_shared_style_file_a_huge_minimum_area_and_a_bad_window_are_refused_first(scene, tmp_path):
    shared = SegmentOutputs(str(tmp_path / "x.tif"), vector=str(tmp_path / "x.shp"))
    with pytest.raises(RasterInputError, match=r"would share the style file x\.qml, which QGIS loads for both"):
        check_request(scene, shared, options())
    with pytest.raises(RasterInputError, match=r"MIN_AREA 3e\+09 m2 is larger than the whole raster"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif"), vector=str(tmp_path / "p.gpkg"),
                                            min_area_m2=3e9), options())
    for window, stride in ((7, 3), (-5, None)):  # the window rule, not the size estimate, even on a finer grid
        with pytest.raises(RasterInputError, match=f"window {window} and stride .* do not work"):
            check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")),
                          options(window=window, stride=stride or 112, resolution=0.01))
    with pytest.raises(RasterInputError, match="has no width or no height"):
        check_request(scene, SegmentOutputs(str(tmp_path / "c.tif")),
                      options(extent=(500010.0, 5599950.0, 500010.0, 5599990.0)))


def test_connection_strings_and_subdatasets(scene, tmp_path):
    gpkg = tmp_path / "r.gpkg"
    gdal.Translate(str(gpkg), scene, format="GPKG", creationOptions=["RASTER_TABLE=first"])
    gdal.Translate(str(gpkg), scene, format="GPKG", creationOptions=["RASTER_TABLE=second", "APPEND_SUBDATASET=YES"])
    check_request(f"GPKG:{gpkg}:first", SegmentOutputs(str(tmp_path / "c.tif")), options())
    with pytest.raises(RasterInputError, match=r"r\.gpkg holds 2 subdataset\(s\), not bands: give one of them as the "
                                               r"input \(GPKG:.*:first"):
        check_request(str(gpkg), SegmentOutputs(str(tmp_path / "c.tif")), options())


def test_classes_split_on_a_typed_backslash_n_and_a_word_names_one_class():
    assert Vocabulary.parse("building\\nroad,street\\ntree").classes == (("building",), ("road", "street"),
                                                                         ("tree",))
    with pytest.raises(ValueError, match=r"'Road' is on class lines 1 and 2: a word can name one class only"):
        Vocabulary.parse("road\nRoad ")
    assert Vocabulary.parse("road, road,lane").classes == (("road", "lane"),)
