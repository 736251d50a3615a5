"""segearth:segment and segearth:vectorize in real QGIS: processing.run, qgis_process.bin and a .model3 chain."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsProject, QgsRasterLayer
from rasters import read_band, scene_bands, write_geotiff

from segearth_qgis.core import Vocabulary, segment_image
from tools.build.plugin import stage_plugin

CLASSES = "background\nbuilding,roof\nroad\nwater,river\ntree"


def run(algorithm, parameters, feedback=None):
    import processing

    return processing.run(algorithm, parameters, feedback=feedback or QgsProcessingFeedback())


def segment(bundle, source, out, **extra):
    parameters = {"INPUT": source, "CLASSES": CLASSES, "MODEL": str(bundle), "DEVICE": "cpu",
                  "OUTPUT": str(out / "classes.tif")}
    parameters.update(extra)
    return run("segearth:segment", parameters)


def qgis_process_env(tmp_path):
    """The environment of a qgis_process.bin with this checkout's plugin staged and enabled in a fresh profile."""
    staged = stage_plugin(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    return env


def class_table(path):
    """Category names and colours read back from a fresh GDAL open (what other GIS software sees)."""
    dataset = gdal.Open(str(path))
    band = dataset.GetRasterBand(1)
    table = band.GetRasterColorTable()
    band.GetDescription()  # GDAL 3.6 GeoTIFF: loads the .aux.xml, which holds the category names
    return list(band.GetCategoryNames()), [table.GetColorEntry(i)[:3] for i in range(table.GetCount())]


def test_projected_rgb_gives_styled_raster_polygons_areas_and_the_runtime(segearth_processing, tiny_bundle,
                                                                          tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(260, 380, seed=1))
    before = open(source, "rb").read()
    out = tmp_path / "out"
    result = segment(tiny_bundle, source, out, OUTPUT_VECTOR=str(out / "classes.gpkg"),
                     OUTPUT_CONFIDENCE=str(out / "confidence.tif"), OUTPUT_AREAS=str(out / "areas.csv"))
    assert open(source, "rb").read() == before
    dataset = gdal.Open(result["OUTPUT"])
    reference = gdal.Open(source)
    assert dataset.GetGeoTransform() == reference.GetGeoTransform()
    assert osr.SpatialReference(dataset.GetProjection()).IsSame(osr.SpatialReference(reference.GetProjection()))
    band = dataset.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert dataset.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert band.GetBlockSize() == [256, 256]
    names, colors = class_table(result["OUTPUT"])
    assert names == ["background", "building", "road", "water", "tree"]
    assert colors[0] == (160, 160, 160) and len(set(colors[:5])) == 5
    labels = band.ReadAsArray()
    assert labels.max() < 5
    areas = json.loads(result["AREAS"])
    assert [a["class_name"] for a in areas["classes"]] == names
    assert [a["pixels"] for a in areas["classes"]] == np.bincount(labels.ravel(), minlength=5).tolist()
    assert areas["total_m2"] == pytest.approx(260 * 380 * 0.25)
    assert "onnx backend" in result["RUNTIME"] and "CPUExecutionProvider" in result["RUNTIME"]
    csv_lines = (out / "areas.csv").read_text().splitlines()
    assert csv_lines[0] == "class_id,class_name,pixels,area_m2,percent" and len(csv_lines) == 6
    style = QgsRasterLayer(result["OUTPUT"], "classes")
    message, ok = style.loadNamedStyle(str(out / "classes.qml"))
    assert ok, message
    assert style.renderer().type() == "paletted"
    assert [c.label for c in style.renderer().classes()] == names
    polygons = ogr.Open(str(out / "classes.gpkg"))
    layer = polygons.GetLayer(0)
    definition = layer.GetLayerDefn()
    fields = {definition.GetFieldDefn(i).GetName(): definition.GetFieldDefn(i).GetTypeName()
              for i in range(definition.GetFieldCount())}
    assert fields == {"class_id": "Integer", "class_name": "String", "area_m2": "Real"}
    per_class = {}
    for feature in layer:
        assert feature["class_name"] == names[feature["class_id"]]
        assert feature["area_m2"] == pytest.approx(feature.GetGeometryRef().GetArea())
        per_class[feature["class_id"]] = per_class.get(feature["class_id"], 0) + feature["area_m2"]
    for area in areas["classes"]:
        assert per_class.get(area["class_id"], 0.0) == pytest.approx(area["area_m2"], rel=1e-9)
    assert layer.GetSpatialRef().IsSame(osr.SpatialReference(reference.GetProjection()))
    confidence = read_band(out / "confidence.tif")
    assert confidence.dtype == np.float32 and 0 < confidence.min() and confidence.max() <= 1


def test_streamed_result_equals_segment_image_with_the_same_onnx_model(segearth_processing, tiny_bundle, tmp_path):
    from segearth_qgis.core.runtime.loader import load_bundle

    bands = scene_bands(300, 900, seed=2)
    source = write_geotiff(tmp_path / "wide.tif", bands)
    result = segment(tiny_bundle, source, tmp_path, OUTPUT_CONFIDENCE=str(tmp_path / "confidence.tif"))
    model = load_bundle(tiny_bundle, "onnx", "cpu")
    reference = segment_image(model, bands.transpose(1, 2, 0), Vocabulary.parse(CLASSES), resize_longer_side=None,
                              batch_size=4)
    labels = read_band(result["OUTPUT"])
    assert (labels == reference.labels).mean() >= 0.9999
    np.testing.assert_allclose(read_band(tmp_path / "confidence.tif"), reference.probabilities.max(axis=0),
                               atol=2.5e-4)


def test_geographic_raster_keeps_its_grid_and_measures_metres(segearth_processing, tiny_bundle, tmp_path):
    transform = (10.0, 0.00001, 0.0, 60.0, 0.0, -0.00001)  # about 0.56 m x 1.11 m at 60 N
    source = write_geotiff(tmp_path / "wgs84.tif", scene_bands(120, 200, seed=3), epsg=4326, geotransform=transform)
    result = segment(tiny_bundle, source, tmp_path, RESOLUTION=1.2)
    dataset = gdal.Open(result["OUTPUT"])
    assert dataset.GetGeoTransform() == transform
    assert osr.SpatialReference(dataset.GetProjection()).GetAuthorityCode(None) == "4326"
    total = json.loads(result["AREAS"])["total_m2"]
    assert total == pytest.approx(120 * 200 * 0.5577 * 1.1169, rel=5e-3)


def test_sixteen_bit_four_bands_with_a_band_mapping(segearth_processing, tiny_bundle, tmp_path):
    from segearth_qgis.core.gis.source import ProcessingSource
    from segearth_qgis.core.runtime.loader import load_bundle

    rng = np.random.default_rng(4)
    bands = (scene_bands(150, 260, seed=4).astype(np.uint16) * 40)[[2, 1, 0]]
    bands = np.concatenate([bands, rng.integers(0, 9000, size=(1, 150, 260)).astype(np.uint16)])[[3, 0, 1, 2]]
    source = write_geotiff(tmp_path / "multi.tif", bands)
    result = segment(tiny_bundle, source, tmp_path, BANDS=[4, 3, 2])
    reader = ProcessingSource(source, bands=[4, 3, 2])
    rgb, _ = reader.read(0, 150)
    reader.close()
    reference = segment_image(load_bundle(tiny_bundle, "onnx", "cpu"), rgb, Vocabulary.parse(CLASSES),
                              resize_longer_side=None)
    assert (read_band(result["OUTPUT"]) == reference.labels).mean() >= 0.9999


def test_nodata_holes_and_an_all_nodata_raster(segearth_processing, tiny_bundle, tmp_path):
    bands = scene_bands(200, 300, seed=5)
    bands[:, 50:90, 60:200] = 0
    source = write_geotiff(tmp_path / "holes.tif", bands, nodata=0)
    labels = read_band(segment(tiny_bundle, source, tmp_path)["OUTPUT"])
    hole = (bands == 0).all(axis=0)
    assert (labels[hole] == 255).all() and (labels[~hole] < 5).all()
    empty = write_geotiff(tmp_path / "empty.tif", np.zeros((3, 50, 50), np.uint8), nodata=0)
    out = tmp_path / "empty-out"
    with pytest.raises(QgsProcessingException, match="no valid pixels"):
        segment(tiny_bundle, empty, out)
    assert not out.exists() or not list(out.iterdir())


def test_fp16_on_the_cpu_is_refused_with_what_to_choose(segearth_processing, tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(64, 64))
    with pytest.raises(QgsProcessingException, match="fp16 runs on a CUDA GPU only.*choose precision fp32"):
        segment(tiny_bundle, source, tmp_path, PRECISION="fp16")
    assert not (tmp_path / "classes.tif").exists()


def test_extent_output_is_the_snapped_part_of_the_input_grid(segearth_processing, tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(200, 300, seed=6))
    x0, y0 = 500000.0, 5600000.0
    extent = f"{x0 + 10.2},{x0 + 80.7},{y0 - 60.1},{y0 - 20.4} [EPSG:25832]"
    dataset = gdal.Open(segment(tiny_bundle, source, tmp_path, EXTENT=extent)["OUTPUT"])
    assert (dataset.RasterXSize, dataset.RasterYSize) == (142, 81)
    assert dataset.GetGeoTransform() == (x0 + 10.0, 0.5, 0.0, y0 - 20.0, 0.0, -0.5)


def test_unclassified_class_and_background_threshold(segearth_processing, tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(120, 160, seed=7))
    plain = segment(tiny_bundle, source, tmp_path / "plain", CLASSES="building\nroad\nwater")
    assert class_table(plain["OUTPUT"])[0] == ["building", "road", "water", "unclassified"]
    out = tmp_path / "threshold"
    result = segment(tiny_bundle, source, out, THRESHOLD=0.4, OUTPUT_CONFIDENCE=str(out / "confidence.tif"))
    labels = read_band(result["OUTPUT"])
    confidence = read_band(out / "confidence.tif")
    assert class_table(result["OUTPUT"])[0][0] == "background"
    assert (labels[confidence < 0.4] == 0).all()
    low = confidence < 0.4
    assert low.any() and (~low).any()


def test_cancelling_leaves_no_output(segearth_processing, tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(300, 600, seed=8))

    class CancelSoon(QgsProcessingFeedback):
        def setProgress(self, value):
            super().setProgress(value)
            if value > 0:
                self.cancel()

    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run("segearth:segment", {"INPUT": source, "CLASSES": CLASSES, "MODEL": str(tiny_bundle),
                                 "OUTPUT": str(out / "classes.tif"), "OUTPUT_VECTOR": str(out / "p.gpkg")},
            CancelSoon())
    assert not out.exists() or not list(out.iterdir())


def test_vectorize_alone_with_minimum_area(segearth_processing, tmp_path):
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 10:30] = 1
    labels[5, 50] = 1            # a one-pixel island, 0.25 m2
    labels[35:, :] = 255
    path = write_geotiff(tmp_path / "labels.tif", labels[None], nodata=255)
    dataset = gdal.Open(path, gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(["field", "house"])
    dataset = None
    counts = {}
    for min_area in (0.0, 1.0):
        result = run("segearth:vectorize", {"INPUT": path, "MIN_AREA": min_area,
                                            "OUTPUT": str(tmp_path / f"polygons-{min_area}.gpkg")})
        polygons = ogr.Open(result["OUTPUT"])
        features = list(polygons.GetLayer(0))
        counts[min_area] = len(features)
        assert sum(f["area_m2"] for f in features) == pytest.approx(35 * 60 * 0.25)
        assert {f["class_name"] for f in features} == {"field", "house"}
    assert counts[0.0] == counts[1.0] + 1


def test_vectorize_refuses_a_float_raster_with_the_sentence(segearth_processing, tmp_path):
    path = write_geotiff(tmp_path / "scores.tif", np.full((1, 20, 20), 3.0e12, np.float32))
    with pytest.raises(QgsProcessingException) as raised:
        run("segearth:vectorize", {"INPUT": path, "OUTPUT": str(tmp_path / "p.gpkg")})
    assert str(raised.value) == (f"{path} band 1 holds Float32 values, not class ids: give the classified raster "
                                 "segment wrote (8-bit, one class per value)")
    assert not (tmp_path / "p.gpkg").exists() and not (tmp_path / "p.qml").exists()


def test_an_unforeseen_failure_is_one_sentence_with_the_traceback_at_debug_level(segearth_processing, tmp_path,
                                                                                  monkeypatch):
    import segearth_qgis.core.gis.vectorize as vectorize

    def boom(*args, **kwargs):
        raise KeyError("boom")

    class Recorder(QgsProcessingFeedback):
        debug = ""

        def pushDebugInfo(self, text):
            Recorder.debug += text

    monkeypatch.setattr(vectorize, "polygonize", boom)
    path = write_geotiff(tmp_path / "labels.tif", np.ones((1, 20, 20), np.uint8), nodata=255)
    with pytest.raises(QgsProcessingException) as raised:
        run("segearth:vectorize", {"INPUT": path, "OUTPUT": str(tmp_path / "p.gpkg")}, Recorder())
    assert str(raised.value) == ("unexpected KeyError: 'boom'; the traceback is in the log at debug level: please "
                                 "report it")
    assert "Traceback (most recent call last)" in Recorder.debug and "boom" in Recorder.debug
    assert not (tmp_path / "p.gpkg").exists()


def write_chain_model(path):
    """segearth:segment -> segearth:vectorize -> native:dissolve by class, saved as a .model3."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("segment_vectorize_dissolve", "Map, vectorize, dissolve", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    model.addModelParameter(QgsProcessingParameterFile("bundle", "Bundle", QgsProcessingParameterFile.Behavior.Folder),
                            QgsProcessingModelParameter("bundle"))
    steps = [("segment", "segearth:segment", {"INPUT": ("model", "raster"), "MODEL": ("model", "bundle"),
                                               "CLASSES": ("static", "building\nroad\nwater"),
                                               "DEVICE": ("static", "cpu")}),
             ("vectorize", "segearth:vectorize", {"INPUT": ("child", "segment", "OUTPUT")}),
             ("dissolve", "native:dissolve", {"INPUT": ("child", "vectorize", "OUTPUT"),
                                              "FIELD": ("static", ["class_name"])})]
    for child_id, algorithm, sources in steps:
        child = QgsProcessingModelChildAlgorithm(algorithm)
        child.setChildId(child_id)
        for name, source in sources.items():
            if source[0] == "model":
                value = QgsProcessingModelChildParameterSource.fromModelParameter(source[1])
            elif source[0] == "child":
                value = QgsProcessingModelChildParameterSource.fromChildOutput(source[1], source[2])
            else:
                value = QgsProcessingModelChildParameterSource.fromStaticValue(source[1])
            child.addParameterSources(name, [value])
        if child_id == "dissolve":
            output = QgsProcessingModelOutput("dissolved")
            output.setChildOutputName("OUTPUT")
            child.setModelOutputs({"dissolved": output})
        model.addChildAlgorithm(child)
    assert model.toFile(str(path))
    return path


def check_dissolved(path):
    dataset = ogr.Open(str(path))
    names = sorted(f["class_name"] for f in dataset.GetLayer(0))
    assert names and len(names) == len(set(names)) and set(names) <= {"building", "road", "water", "unclassified"}


def test_model3_chain_runs_in_processing_and_qgis_process(segearth_processing, tiny_bundle, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    source = write_geotiff(tmp_path / "scene.tif", scene_bands(150, 200, seed=9))
    model_path = write_chain_model(tmp_path / "chain.model3")
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(model_path))
    output_name = next(p.name() for p in model.destinationParameterDefinitions())
    result = run(model, {"raster": source, "bundle": str(tiny_bundle), output_name: str(tmp_path / "d1.gpkg")})
    check_dissolved(result[output_name])
    env = qgis_process_env(tmp_path)
    process = subprocess.run(["qgis_process.bin", "run", str(model_path), "--", f"raster={source}",
                              f"bundle={tiny_bundle}", f"{output_name}={tmp_path / 'd2.gpkg'}"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    check_dissolved(tmp_path / "d2.gpkg")


def test_qgis_process_runs_segment_with_a_json_report(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(100, 140, seed=10), epsg=32632)
    env = qgis_process_env(tmp_path)
    process = subprocess.run(["qgis_process.bin", "--json", "run", "segearth:segment", "--", f"INPUT={source}",
                              "CLASSES=building,roof\nroad", f"MODEL={tiny_bundle}", "DEVICE=cpu", "RESOLUTION=1",
                              f"OUTPUT={tmp_path / 'classes.tif'}"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    report = json.loads(process.stdout)
    assert report["results"]["OUTPUT"] == str(tmp_path / "classes.tif")
    assert "CPUExecutionProvider" in report["results"]["RUNTIME"]
    assert class_table(tmp_path / "classes.tif")[0] == ["building", "road", "unclassified"]
    assert gdal.Open(str(tmp_path / "classes.tif")).GetGeoTransform() == gdal.Open(source).GetGeoTransform()


def test_web_layer_is_fetched_through_its_provider(segearth_processing, tiny_bundle, tmp_path):
    """An XYZ layer (local tiles through a file:// URL) is fetched for EXTENT at RESOLUTION, segmented, and the
    temporary GeoTIFF is removed."""
    import processing  # noqa: F401  (QgsProcessingUtils.tempFolder below is the one processing.run uses)
    from qgis.core import QgsProcessingUtils

    zoom, first = 17, 2 ** 16  # tiles just south-east of (0, 0): 1.194 m pixels in EPSG:3857
    scene = scene_bands(768, 768, seed=12)
    driver = gdal.GetDriverByName("PNG")
    for row in range(3):
        for col in range(3):
            folder = tmp_path / "tiles" / str(zoom) / str(first + col)
            folder.mkdir(parents=True, exist_ok=True)
            tile = gdal.GetDriverByName("MEM").Create("", 256, 256, 3, gdal.GDT_Byte)
            for index in range(3):
                tile.GetRasterBand(index + 1).WriteArray(scene[index, 256 * row:256 * (row + 1),
                                                               256 * col:256 * (col + 1)])
            driver.CreateCopy(str(folder / f"{first + row}.png"), tile)
    uri = f"type=xyz&url=file://{tmp_path / 'tiles'}/{{z}}/{{x}}/{{y}}.png&zmin={zoom}&zmax={zoom}"
    layer = QgsRasterLayer(uri, "local xyz", "wms")
    assert layer.isValid(), layer.error().summary()
    before = set(os.listdir(QgsProcessingUtils.tempFolder()))
    out = tmp_path / "out"
    result = segment(tiny_bundle, layer, out, EXTENT="50,850,-850,-50 [EPSG:3857]", RESOLUTION=2.0)
    dataset = gdal.Open(result["OUTPUT"])
    assert osr.SpatialReference(dataset.GetProjection()).GetAuthorityCode(None) == "3857"
    x0, dx, _, y0, _, dy = dataset.GetGeoTransform()
    assert (x0, y0) == pytest.approx((50, -50)) and (x0 + dx * dataset.RasterXSize) == pytest.approx(850)
    assert y0 + dy * dataset.RasterYSize == pytest.approx(-850)
    assert dx == pytest.approx(2.0, rel=0.01) and dy == pytest.approx(-2.0, rel=0.01)
    labels = read_band(result["OUTPUT"])
    assert (labels != 255).all() and set(np.unique(labels)) <= set(range(5))
    assert "CPUExecutionProvider" in result["RUNTIME"]
    assert not [name for name in set(os.listdir(QgsProcessingUtils.tempFolder())) - before
                if name.startswith("web-layer-")]


def digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_outputs_onto_the_input_or_each_other_are_refused_before_any_work(segearth_processing, tiny_bundle,
                                                                          tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(60, 80, seed=20))
    before = digest(source)
    for extra, wrong in [({"OUTPUT": source}, "OUTPUT"), ({"OUTPUT_AREAS": source}, "OUTPUT_AREAS"),
                         ({"OUTPUT_CONFIDENCE": str(tmp_path / "out" / "classes.tif")}, "OUTPUT_CONFIDENCE"),
                         ({"OUTPUT_VECTOR": f"{source}.aux.xml"}, "OUTPUT_VECTOR")]:
        with pytest.raises(QgsProcessingException, match=f"^{wrong} .* would overwrite the (input INPUT|output "
                                                         "OUTPUT)"):
            segment(tiny_bundle, source, tmp_path / "out", **extra)
    assert digest(source) == before and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
    layer = QgsProject.instance().addMapLayer(QgsRasterLayer(source, "scene"))  # as the dialog passes a layer
    try:
        with pytest.raises(QgsProcessingException, match="would overwrite the input INPUT"):
            segment(tiny_bundle, layer.id(), tmp_path / "out", OUTPUT=source)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    assert digest(source) == before and not (tmp_path / "out").exists()  # (QGIS itself adds scene.tif.aux.xml)


def test_evaluate_refuses_its_report_over_the_classified_input(segearth_processing, tmp_path):
    labels = write_geotiff(tmp_path / "classes.tif", np.ones((1, 20, 20), np.uint8), nodata=255)
    reference = write_geotiff(tmp_path / "truth.tif", np.ones((1, 20, 20), np.uint8), nodata=255)
    before = digest(labels)
    for output in ("OUTPUT", "OUTPUT_CSV"):
        parameters = {"INPUT": labels, "REFERENCE": reference, "OUTPUT": str(tmp_path / "report.json"),
                      output: labels if output == "OUTPUT" else reference}
        with pytest.raises(QgsProcessingException, match=f"^{output} .* would overwrite the input"):
            run("segearth:evaluate", parameters)
    assert digest(labels) == before and not (tmp_path / "report.json").exists()


def test_bands_as_qgis_process_sends_them_and_non_finite_numbers(segearth_processing, tiny_bundle, tmp_path):
    bands = np.concatenate([scene_bands(50, 60, seed=21), scene_bands(50, 60, seed=22)[:1]])
    source = write_geotiff(tmp_path / "four.tif", bands)
    text = segment(tiny_bundle, source, tmp_path / "a", BANDS="3,2,1")
    listed = segment(tiny_bundle, source, tmp_path / "b", BANDS=[3, 2, 1])
    assert np.array_equal(read_band(text["OUTPUT"]), read_band(listed["OUTPUT"]))
    default = segment(tiny_bundle, source, tmp_path / "c")
    assert not np.array_equal(read_band(text["OUTPUT"]), read_band(default["OUTPUT"]))
    for name in ("GBA_LAMBDA", "THRESHOLD"):
        with pytest.raises(QgsProcessingException, match=f"^{name} is nan: give a finite number$"):
            segment(tiny_bundle, source, tmp_path / "d", **{name: float("nan")})
    assert not (tmp_path / "d").exists()


def test_an_empty_or_truncated_input_file_is_named_with_what_is_wrong(segearth_processing, tiny_bundle, tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    whole = write_geotiff(tmp_path / "whole.tif", scene_bands(300, 300, seed=23))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(open(whole, "rb").read()[:100_000])
    for path, message in [(empty, r"is empty \(0 bytes\)"), (truncated, "cannot be read to its end")]:
        with pytest.raises(QgsProcessingException, match=f"INPUT: {path} {message}"):
            segment(tiny_bundle, str(path), tmp_path / "out")
        with pytest.raises(QgsProcessingException, match=f"INPUT: {path} {message}"):
            run("segearth:vectorize", {"INPUT": str(path), "OUTPUT": str(tmp_path / "out" / "p.gpkg")})
    assert not (tmp_path / "out").exists()


def test_qgis_process_bands_comma_list_and_a_refused_output(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(60, 70, seed=24), epsg=32632)
    env = qgis_process_env(tmp_path)
    common = ["qgis_process.bin", "run", "segearth:segment", "--", f"INPUT={source}", "CLASSES=road",
              f"MODEL={tiny_bundle}", "DEVICE=cpu"]
    done = subprocess.run([*common, "BANDS=3,2,1", f"OUTPUT={tmp_path / 'classes.tif'}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bands [3, 2, 1]" in done.stdout + done.stderr
    before = digest(source)
    refused = subprocess.run([*common, f"OUTPUT={source}"], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert f"OUTPUT ({source}) would overwrite the input INPUT" in refused.stdout + refused.stderr
    assert digest(source) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_qgis_process_killed_by_a_signal_leaves_no_file_behind(tiny_bundle, tmp_path, signum):
    """A stopped job or a closed terminal (SIGTERM, SIGHUP) while qgis_process writes: the partial outputs go and
    the process dies of the signal."""
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(800, 800, seed=25), epsg=32632)
    env = qgis_process_env(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(["qgis_process.bin", "run", "segearth:segment", "--", f"INPUT={source}",
                                "CLASSES=road\nwater\ntree", f"MODEL={tiny_bundle}", "DEVICE=cpu",
                                f"OUTPUT={out / 'classes.tif'}", f"OUTPUT_CONFIDENCE={out / 'confidence.tif'}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not [p for p in out.iterdir() if ".partial-" in p.name]:
        assert process.poll() is None, "qgis_process ended before writing"
        assert time.monotonic() < deadline, "no partial output in 240 s"
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signum)
    assert process.wait(timeout=120) == -signum
    assert sorted(os.listdir(out)) == []
