"""Evaluation: the metric against independent computations (a numpy bincount, mmseg's IoUMetric rules), label
encodings, the report files, the paper protocol, and the CLI's report against segearth:evaluate on its rasters."""

import csv
import json
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from rasters import UTM32_ORIGIN, scene_bands, write_geotiff

from segearth_qgis.core.common.feedback import Cancelled, Feedback
from segearth_qgis.core.eval.dataset import EvaluationSettings, evaluate_dataset, pair_files
from segearth_qgis.core.eval.metric import IGNORED, ConfusionMatrix, EvaluationReport, LabelEncoding, LabelError
from segearth_qgis.core.gis.raster import RasterInputError

NO_QGIS = """import sys
from segearth_qgis.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] == "qgis"], "the command-line evaluate imported qgis"
sys.exit(code)
"""


def bincount_confusion(reference, prediction, num_classes, ignore_index=255):
    """Independent: rows reference, columns predicted; predictions outside 0..n-1 go to an extra last column."""
    reference, prediction = np.ravel(reference).astype(np.int64), np.ravel(prediction).astype(np.int64)
    keep = reference != ignore_index
    reference, prediction = reference[keep], prediction[keep]
    prediction = np.where((prediction >= 0) & (prediction < num_classes), prediction, num_classes)
    return np.bincount(reference * (num_classes + 1) + prediction,
                       minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def mmseg_reduce_zero_label(label):
    """mmseg LoadAnnotations: uint8 labels, 0 -> 255, minus one, 254 -> 255."""
    label = label.astype(np.uint8).copy()
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


def mmseg_intersect_and_union(prediction, label, num_classes, ignore_index=255):
    """mmseg's intersect_and_union: histograms over 0..n-1 (values outside are dropped, like torch.histc)."""
    mask = label != ignore_index
    prediction, label = prediction[mask], label[mask]
    intersect = prediction[prediction == label]

    def histogram(values):
        return np.histogram(values, bins=num_classes, range=(0, num_classes - 1))[0]

    area_intersect, area_prediction, area_label = histogram(intersect), histogram(prediction), histogram(label)
    return area_intersect, area_prediction + area_label - area_intersect, area_prediction, area_label


def mmseg_metrics(pairs, num_classes, reduce_zero_label=False):
    """mmseg IoUMetric.compute_metrics over (prediction, raw label) pairs: dataset-level sums, then nanmean."""
    totals = np.zeros((4, num_classes))
    for prediction, label in pairs:
        label = mmseg_reduce_zero_label(label) if reduce_zero_label else label.astype(np.uint8)
        totals += np.array(mmseg_intersect_and_union(prediction.astype(np.int64), label.astype(np.int64),
                                                     num_classes))
    intersect, union, _, area_label = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, accuracy = intersect / union, intersect / area_label
    return {"iou": 100 * iou, "accuracy": 100 * accuracy, "miou": 100 * np.nanmean(iou),
            "macc": 100 * np.nanmean(accuracy), "pixel_accuracy": 100 * intersect.sum() / area_label.sum()}


def report_of(class_names, pairs, encoding, background_index=None):
    report = EvaluationReport(class_names, ConfusionMatrix(len(class_names)), background_index)
    for index, (prediction, raw) in enumerate(pairs):
        confusion = ConfusionMatrix(len(class_names))
        confusion.add(encoding.decode(raw), prediction)
        report.add_image(f"image{index}", confusion)
    return report


def test_hand_made_4x4_pair_with_ignore_pixels_and_an_absent_class():
    reference = np.array([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 255, 255],
                          [2, 2, 0, 1]], np.uint8)
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 1, 0],
                           [2, 0, 0, 1],
                           [1, 2, 0, 1]])
    names = ["background", "building", "road", "water"]   # water occurs in neither: no IoU, left out of the mean
    report = report_of(names, [(prediction, reference)], LabelEncoding(names)).as_dict()
    # by hand: class 0 has 5 reference and 6 predicted pixels, 4 agree; class 1 likewise; class 2 4, 2 and 2
    expected_iou = [Fraction(4, 7), Fraction(4, 7), Fraction(1, 2)]
    assert [c["iou"] for c in report["classes"][:3]] == pytest.approx([100 * float(v) for v in expected_iou])
    assert report["classes"][3]["iou"] is None and report["classes"][3]["accuracy"] is None
    assert report["miou"] == pytest.approx(100 * float(Fraction(23, 42)))
    assert report["pixel_accuracy"] == pytest.approx(100 * 10 / 14)
    assert report["macc"] == pytest.approx(100 * (0.8 + 0.8 + 0.5) / 3)
    assert (report["scored_pixels"], report["ignored_pixels"]) == (14, 2)
    assert [c["reference_pixels"] for c in report["classes"]] == [5, 5, 4, 0]
    assert [c["predicted_pixels"] for c in report["classes"]] == [6, 6, 2, 0]
    assert report["confusion_matrix"] == bincount_confusion(reference, prediction, 4)[:, :4].tolist()
    assert report["foreground_iou"] is None


def test_dataset_level_confusion_equals_bincount_and_mmseg_iou_metric():
    rng = np.random.default_rng(0)
    names = ["background", "building", "road", "water", "tree", "field", "bare"]   # 'bare' never occurs
    pairs = []
    for height, width in [(31, 47), (64, 64), (5, 90)]:
        raw = rng.integers(0, 7, (height, width)).astype(np.uint8)          # stored 0..6: 0 is no-data (LoveDA)
        raw[rng.random(raw.shape) < 0.05] = 255
        prediction = rng.choice([0, 1, 2, 3, 4, 5, 7, 255], size=raw.shape, p=[.2, .2, .2, .1, .1, .1, .05, .05])
        pairs.append((prediction, raw))
    encoding = LabelEncoding(names, 255, reduce_zero_label=True)
    report = report_of(names, pairs, encoding)
    # the independent matrix: mmseg's reduce on uint8, then a plain bincount; 7 and 255 are no class of the 7
    expected = sum(bincount_confusion(mmseg_reduce_zero_label(raw), prediction, 7) for prediction, raw in pairs)
    np.testing.assert_array_equal(report.confusion.counts, expected)
    mmseg = mmseg_metrics(pairs, 7, reduce_zero_label=True)
    result = report.as_dict()
    iou = np.array([np.nan if c["iou"] is None else c["iou"] for c in result["classes"]])
    np.testing.assert_allclose(iou, mmseg["iou"], equal_nan=True)
    assert np.isnan(iou[6]) and result["classes"][6]["union"] == 0
    for key in ("miou", "macc", "pixel_accuracy"):
        assert result[key] == pytest.approx(mmseg[key])
    per_image_mean = np.mean([image["miou"] for image in result["images"]])
    assert abs(per_image_mean - result["miou"]) > 0.01   # dataset-level accumulation, not a mean of images
    assert result["ignored_pixels"] == sum(int((mmseg_reduce_zero_label(raw) == 255).sum()) for _, raw in pairs)


def test_mmseg_agreement_without_reduce_and_out_of_range_predictions():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 4, (20, 30)), np.where(rng.random((20, 30)) < 0.1, 255,
                                                      rng.integers(0, 3, (20, 30))).astype(np.uint8))]
    names = ["background", "building", "road"]
    result = report_of(names, pairs, LabelEncoding(names)).as_dict()
    mmseg = mmseg_metrics(pairs, 3)
    np.testing.assert_allclose([c["iou"] for c in result["classes"]], mmseg["iou"])
    assert result["miou"] == pytest.approx(mmseg["miou"])
    assert result["pixel_accuracy"] == pytest.approx(mmseg["pixel_accuracy"])
    assert sum(c["unpredicted_pixels"] for c in result["classes"]) == int(((pairs[0][0] == 3) &
                                                                            (pairs[0][1] != 255)).sum())


def test_label_map_ranges_names_ignore_and_nodata():
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    binary = LabelEncoding(["background", "building"], 255, label_map="0-127:0, 128-255:1")
    np.testing.assert_array_equal(binary.decode(stored), (stored >= 128).astype(np.int32))
    whu = LabelEncoding(["background", "building"], 255, label_map="255:1")   # the map wins over the ignore index
    np.testing.assert_array_equal(whu.decode(np.array([0, 255, 0], np.uint8)), [0, 1, 0])
    names = ["background", "building", "road"]
    encoding = LabelEncoding(names, 255, label_map="forest:ignore; house:building\n9:road; 4-5:0",
                             aliases=[("background",), ("building", "roof"), ("road", "street")])
    assert [encoding.value(v) for v in ("Roof", "street", "forest", "house", "2", "lake")] == [1, 2, IGNORED, 1, 2,
                                                                                                None]
    assert [encoding.value(v) for v in (9, 4, 5, 255, 3, 2.5)] == [2, 0, 0, IGNORED, None, None]
    floats = np.array([[0.0, 1.0], [np.nan, 2.0]], np.float32)
    np.testing.assert_array_equal(encoding.decode(floats, valid=~np.isnan(floats)), [[0, 1], [IGNORED, 2]])
    reduced = LabelEncoding(names, 255, reduce_zero_label=True, label_map="7:ignore")
    np.testing.assert_array_equal(reduced.decode(np.array([0, 1, 3, 7, 255], np.uint8)),
                                  [IGNORED, 0, 2, IGNORED, IGNORED])
    with pytest.raises(LabelError, match=r"values 3, 9 are neither classes 0\.\.2"):
        LabelEncoding(names).decode(np.array([[0, 3], [9, 255]], np.uint8))
    LabelEncoding(names).decode(np.array([0, 9], np.uint8), valid=np.array([True, False]))   # nodata is not checked
    for spec, problem in [("255", "not VALUE:CLASS"), ("5:7", "not a class index"), ("9-3:1", "runs backwards"),
                          ("lake:pond", "not a class index")]:
        with pytest.raises(LabelError, match=problem):
            LabelEncoding(names, label_map=spec)


def test_report_files_and_the_foreground_iou_of_a_binary_set(tmp_path):
    reference = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], np.uint8)
    prediction = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    names = ["background", "building"]
    report = report_of(names, [(prediction, reference)], LabelEncoding(names), background_index=0)
    written = report.write(tmp_path / "r" / "report.json", tmp_path / "r" / "report.csv",
                           tmp_path / "r" / "report.png")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["foreground_class"] == "building"
    assert data["foreground_iou"] == pytest.approx(100 * 3 / 5)     # 3 agree; 4 reference + 4 predicted - 3
    assert data["miou"] == pytest.approx(100 * (2 / 4 + 3 / 5) / 2)
    rows = list(csv.DictReader((tmp_path / "r" / "report.csv").open()))
    assert [r["name"] for r in rows] == names and float(rows[1]["iou"]) == pytest.approx(60.0)
    from PIL import Image

    with Image.open(written["png"]) as image:
        assert image.format == "PNG" and min(image.size) > 200
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.csv", "report.json", "report.png"]
    assert "foreground IoU (building): 60.00 %" in report.table()


def write_png(path, array):
    array = np.asarray(array, np.uint8)
    bands = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    memory = gdal.GetDriverByName("MEM").Create("", bands.shape[2], bands.shape[1], len(bands), gdal.GDT_Byte)
    for index, band in enumerate(bands):
        memory.GetRasterBand(index + 1).WriteArray(band)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), memory)
    return path


def test_pairing_by_name_and_its_errors(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    labels.mkdir()
    for stem in ("a", "b", "c"):
        write_png(images / f"{stem}.png", np.zeros((4, 4)))
        write_png(labels / f"{stem}_gt.png", np.zeros((4, 4)))
    (labels / "notes.txt").write_text("not a raster")
    assert [p[0] for p in pair_files(images, labels, "_gt.png")] == ["a", "b", "c"]
    (tmp_path / "val.txt").write_text("c\na.png\n\n")
    assert [p[0] for p in pair_files(images, labels, "_gt.png", tmp_path / "val.txt")] == ["a", "c"]
    (tmp_path / "val.txt").write_text("c\nd\n")
    with pytest.raises(RasterInputError, match=r"1 of the 2 names in .*val\.txt have no image .*: d"):
        pair_files(images, labels, "_gt.png", tmp_path / "val.txt")
    with pytest.raises(RasterInputError, match=r"3 of 3 images have no label .*a\.png, b\.png, c\.png"):
        pair_files(images, labels)
    write_png(images / "a.tif", np.zeros((4, 4)))
    with pytest.raises(RasterInputError, match=r"a\.png, a\.tif"):
        pair_files(images, labels, "_gt.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RasterInputError, match="no images"):
        pair_files(tmp_path / "empty", labels)
    with pytest.raises(RasterInputError, match="is not a folder"):
        pair_files(tmp_path / "missing", labels)


def labelled_folder(root, sizes, seed=0, label_sizes=None):
    """Generated tiles (PNG, no georeferencing) and LoveDA-coded labels: 0 no-data, 1..7 classes, some 255."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    stored = {}
    for index, (height, width) in enumerate(sizes):
        stem = f"tile{index}"
        write_png(root / "img" / f"{stem}.png", scene_bands(height, width, seed=seed + index).transpose(1, 2, 0))
        label_h, label_w = (label_sizes or sizes)[index]
        blocks = rng.integers(0, 8, (label_h // 8 + 1, label_w // 8 + 1))
        label = np.kron(blocks, np.ones((8, 8), np.int64))[:label_h, :label_w].astype(np.uint8)
        label[rng.random(label.shape) < 0.03] = 255
        stored[stem] = write_png(root / "ann" / f"{stem}.png", label), label
    return root / "img", root / "ann", stored


def test_paper_protocol_is_segment_image_with_the_preset_then_the_label_size(tiny_bundle, tmp_path):
    from segearth_qgis.core import segment_image
    from segearth_qgis.core.method.presets import load_preset
    from segearth_qgis.core.method.resize import resize_bilinear
    from segearth_qgis.core.method.segment import classify
    from segearth_qgis.core.runtime.loader import load_bundle

    model = load_bundle(tiny_bundle, "onnx", "cpu")
    images, labels, stored = labelled_folder(tmp_path, [(96, 136), (120, 88)], seed=3,
                                             label_sizes=[(96, 136), (60, 44)])
    saved = tmp_path / "pred"
    report = evaluate_dataset(images, labels, EvaluationSettings(preset="loveda", model=model, save_predictions=saved))
    preset = load_preset("loveda")
    expected = np.zeros((7, 8), np.int64)
    for stem, (_, raw) in stored.items():
        rgb = gdal.Open(str(images / f"{stem}.png")).ReadAsArray().transpose(1, 2, 0)
        result = segment_image(model, rgb, preset.vocabulary, preset.threshold, preset.background_index,
                               preset.gba_lambda, preset.resize_longer_side, preset.window, preset.stride)
        if raw.shape == rgb.shape[:2]:
            predicted = result.labels
        else:   # the logits are resized to the label's size, then classified
            predicted = classify(resize_bilinear(result.logits, *raw.shape), preset.vocabulary.query_class,
                                 preset.threshold, preset.background_index)[1]
        saved_labels = gdal.Open(str(saved / f"{stem}.tif")).ReadAsArray()
        np.testing.assert_array_equal(saved_labels, predicted)
        expected += bincount_confusion(mmseg_reduce_zero_label(raw), predicted, 7)
    np.testing.assert_array_equal(report.confusion.counts, expected)
    assert report.as_dict()["settings"]["resize_longer_side"] == 448
    assert [c["name"] for c in report.as_dict()["classes"]] == list(preset.dataset_class_names)

    class CancelInTheSecondImage(Feedback):
        def progress(self, fraction):
            self.started = fraction > 0.5

        def cancelled(self):
            return getattr(self, "started", False)

    shutil.rmtree(saved)
    with pytest.raises(Cancelled):
        evaluate_dataset(images, labels, EvaluationSettings(preset="loveda", model=model, save_predictions=saved),
                         feedback=CancelInTheSecondImage())
    assert not list(saved.iterdir())            # the first image's prediction was written, then removed


def run_cli(*args, code=0):
    run = subprocess.run([sys.executable, "-c", NO_QGIS, "evaluate", *map(str, args)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == code, run.stderr
    return run


def test_cli_names_the_images_without_labels(tmp_path):
    images, labels, _ = labelled_folder(tmp_path, [(16, 16), (16, 16)])
    (labels / "tile1.png").unlink()
    run = run_cli("--images", images, "--labels", labels, "--preset", "loveda", "--out", tmp_path / "r.json", code=1)
    assert "evaluate failed: 1 of 2 images have no label of the same name" in run.stderr and "tile1.png" in run.stderr
    assert not (tmp_path / "r.json").exists()


def run_algorithm(parameters, feedback=None):
    import processing
    from qgis.core import QgsProcessingFeedback

    return processing.run("segearth:evaluate", parameters, feedback=feedback or QgsProcessingFeedback())


def without_settings(report):
    return {k: v for k, v in report.items() if k != "settings"}


def test_cli_report_equals_the_algorithm_on_the_rasters_it_wrote(segearth_processing, tiny_bundle, tmp_path):
    images, labels, stored = labelled_folder(tmp_path / "set", [(80, 120), (128, 96), (72, 72)], seed=5)
    run = run_cli("--images", images, "--labels", labels, "--preset", "loveda", "--model", tiny_bundle,
                  "--device", "cpu", "--save-predictions", tmp_path / "pred", "--out", tmp_path / "out" / "r.json")
    assert "mIoU" in run.stdout and "aAcc" in run.stdout
    cli = json.loads((tmp_path / "out" / "r.json").read_text())
    assert (tmp_path / "out" / "r.csv").is_file() and (tmp_path / "out" / "r.png").is_file()
    assert cli["settings"]["reduce_zero_label"] is True and cli["settings"]["threshold"] == 0.3
    summed = np.zeros((7, 7), np.int64)
    for image in cli["images"]:
        stem = image["image"]
        result = run_algorithm({"INPUT": str(tmp_path / "pred" / f"{stem}.tif"), "REFERENCE": str(stored[stem][0]),
                                "PRESET": "loveda", "OUTPUT": str(tmp_path / "alg" / f"{stem}.json"),
                                "OUTPUT_CSV": str(tmp_path / "alg" / f"{stem}.csv"),
                                "OUTPUT_PLOT": str(tmp_path / "alg" / f"{stem}.png")})
        algorithm = json.loads((tmp_path / "alg" / f"{stem}.json").read_text())
        assert algorithm["images"] == [image]
        assert result["MIOU"] == pytest.approx(image["miou"]) and json.loads(result["REPORT"]) == algorithm
        predicted = gdal.Open(str(tmp_path / "pred" / f"{stem}.tif")).ReadAsArray()
        independent = bincount_confusion(mmseg_reduce_zero_label(stored[stem][1]), predicted, 7)
        assert algorithm["confusion_matrix"] == independent[:, :7].tolist()
        summed += np.array(algorithm["confusion_matrix"])
    assert cli["confusion_matrix"] == summed.tolist()
    mmseg = mmseg_metrics([(gdal.Open(str(tmp_path / "pred" / f"{stem}.tif")).ReadAsArray(), raw)
                           for stem, (_, raw) in stored.items()], 7, reduce_zero_label=True)
    assert cli["miou"] == pytest.approx(mmseg["miou"]) and cli["pixel_accuracy"] == pytest.approx(
        mmseg["pixel_accuracy"])

    one = tmp_path / "one"
    (one / "img").mkdir(parents=True)
    (one / "ann").mkdir()
    shutil.copy(images / "tile1.png", one / "img")
    shutil.copy(labels / "tile1.png", one / "ann")
    run_cli("--images", one / "img", "--labels", one / "ann", "--preset", "loveda", "--model", tiny_bundle,
            "--device", "cpu", "--out", one / "r.json", "--quiet")
    single = json.loads((one / "r.json").read_text())
    algorithm = json.loads((tmp_path / "alg" / "tile1.json").read_text())
    assert without_settings(single) == without_settings(algorithm)


def test_map_pipeline_scores_on_the_classified_grid_like_the_algorithm(segearth_processing, tiny_bundle, tmp_path):
    """--pipeline map segments georeferenced rasters as segearth:segment does; a coarser label raster is warped
    onto the classified grid with nearest neighbour."""
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    rng = np.random.default_rng(7)
    write_geotiff(tmp_path / "img" / "scene.tif", scene_bands(90, 130, seed=7))
    coarse = np.kron(rng.integers(0, 3, (5, 8)), np.ones((9, 9), np.int64))[:45, :65].astype(np.uint8)
    transform = (UTM32_ORIGIN[0], 1.0, 0, UTM32_ORIGIN[1], 0, -1.0)      # 1 m labels over 0.5 m pixels
    write_geotiff(tmp_path / "ann" / "scene.tif", coarse[None], geotransform=transform)
    run_cli("--images", tmp_path / "img", "--labels", tmp_path / "ann", "--pipeline", "map",
            "--classes", "background\\nbuilding,roof\\nroad", "--model", tiny_bundle, "--device", "cpu",
            "--save-predictions", tmp_path / "pred", "--out", tmp_path / "r.json")
    cli = json.loads((tmp_path / "r.json").read_text())
    predicted = gdal.Open(str(tmp_path / "pred" / "scene.tif"))
    assert predicted.GetGeoTransform() == gdal.Open(str(tmp_path / "img" / "scene.tif")).GetGeoTransform()
    fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    independent = bincount_confusion(fine, predicted.ReadAsArray(), 3)
    assert cli["confusion_matrix"] == independent[:, :3].tolist()
    run_algorithm({"INPUT": str(tmp_path / "pred" / "scene.tif"), "REFERENCE": str(tmp_path / "ann" / "scene.tif"),
                   "OUTPUT": str(tmp_path / "alg.json")})
    assert without_settings(json.loads((tmp_path / "alg.json").read_text())) == without_settings(cli)


def classified_raster(path, labels, names):
    write_geotiff(path, labels[None].astype(np.uint8), nodata=255)
    dataset = gdal.Open(str(path), gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(names)
    dataset = None
    return str(path)


def write_polygons(path, epsg, features, field_type=ogr.OFTString):
    """``features``: (value, (col0, row0, col1, row1)) pixel rectangles of the 0.5 m UTM 32N test grid."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(25832)
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(utm, srs)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("reference", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", field_type))
    for value, (col0, row0, col1, row1) in features:
        x0, x1 = UTM32_ORIGIN[0] + 0.5 * col0, UTM32_ORIGIN[0] + 0.5 * col1
        y0, y1 = UTM32_ORIGIN[1] - 0.5 * row0, UTM32_ORIGIN[1] - 0.5 * row1
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]:
            ring.AddPoint_2D(*transform.TransformPoint(x, y)[:2])
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(polygon)
        feature.SetField("kind", value)
        layer.CreateFeature(feature)
    dataset = None
    return str(path)


@pytest.mark.parametrize("epsg", [25832, 4326])
def test_polygons_by_class_name_or_value_are_burnt_on_the_classified_grid(segearth_processing, tmp_path, epsg):
    from qgis.core import QgsProcessingException

    rng = np.random.default_rng(epsg)
    prediction = rng.integers(0, 4, (40, 60))
    prediction[0, :5] = 255
    names = ["background", "building", "road", "unclassified"]
    source = classified_raster(tmp_path / "classes.tif", prediction, names)
    rectangles = [(2, 3, 20, 15), (15, 10, 40, 30), (45, 0, 60, 40), (0, 30, 10, 40)]
    expected = np.full(prediction.shape, 255)
    for value, (col0, row0, col1, row1) in zip([1, 2, 0, 255], rectangles, strict=True):
        expected[row0:row1, col0:col1] = value                  # later polygons win; 'forest' is ignored
    by_name = write_polygons(tmp_path / "names.gpkg", epsg,
                             zip(["Roof", "road", "background", "forest"], rectangles, strict=True))
    by_value = write_polygons(tmp_path / "values.gpkg", epsg, zip([1, 2, 0, 9], rectangles, strict=True),
                              ogr.OFTInteger)
    reports = []
    for polygons, label_map in [(by_name, "forest:ignore, roof:building"), (by_value, "9:ignore")]:
        run_algorithm({"INPUT": source, "REFERENCE_POLYGONS": polygons, "CLASS_FIELD": "kind",
                       "LABEL_MAP": label_map, "OUTPUT": str(tmp_path / "report.json")})
        reports.append(json.loads((tmp_path / "report.json").read_text()))
    independent = bincount_confusion(expected, prediction, 3)
    for report in reports:
        assert [c["name"] for c in report["classes"]] == names[:3]          # 'unclassified' is no reference class
        assert report["confusion_matrix"] == independent[:, :3].tolist()
        assert [c["unpredicted_pixels"] for c in report["classes"]] == independent[:, 3].tolist()
        assert report["ignored_pixels"] == int((expected == 255).sum())
    with pytest.raises(QgsProcessingException, match="'forest' are neither classes"):
        run_algorithm({"INPUT": source, "REFERENCE_POLYGONS": by_name, "CLASS_FIELD": "kind",
                       "LABEL_MAP": "roof:building", "OUTPUT": str(tmp_path / "bad.json")})
    assert not (tmp_path / "bad.json").exists()


def test_algorithm_reports_progress_and_cancels_without_output(segearth_processing, tmp_path, monkeypatch):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    import segearth_qgis.core.eval.classified as classified

    monkeypatch.setattr(classified, "BLOCK_PIXELS", 600)                # ten rows of 60 pixels per block
    labels = np.random.default_rng(2).integers(0, 3, (40, 60))
    source = classified_raster(tmp_path / "classes.tif", labels, ["background", "building", "road"])
    reference = write_geotiff(tmp_path / "reference.tif", labels[None].astype(np.uint8))

    class Recorder(QgsProcessingFeedback):
        values = []

        def setProgress(self, value):
            super().setProgress(value)
            self.values.append(value)

    result = run_algorithm({"INPUT": source, "REFERENCE": reference, "OUTPUT": str(tmp_path / "r.json")}, Recorder())
    assert result["MIOU"] == pytest.approx(100.0) and result["PIXEL_ACCURACY"] == pytest.approx(100.0)
    assert [v for v in Recorder.values if v > 0] == pytest.approx([25.0, 50.0, 75.0, 100.0])

    class CancelSoon(QgsProcessingFeedback):
        def setProgress(self, value):
            super().setProgress(value)
            if value > 0:
                self.cancel()

    out = tmp_path / "cancelled"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run_algorithm({"INPUT": source, "REFERENCE": reference, "OUTPUT": str(out / "r.json"),
                       "OUTPUT_CSV": str(out / "r.csv"), "OUTPUT_PLOT": str(out / "r.png")}, CancelSoon())
    assert not out.exists() or not list(out.iterdir())
    with pytest.raises(QgsProcessingException, match="not both or neither"):
        run_algorithm({"INPUT": source, "OUTPUT": str(tmp_path / "none.json")})
    unlabelled = write_geotiff(tmp_path / "unlabelled.tif", np.full((1, 40, 60), 255, np.uint8))
    with pytest.raises(QgsProcessingException, match="labels no pixel"):
        run_algorithm({"INPUT": source, "REFERENCE": unlabelled, "OUTPUT": str(tmp_path / "none.json")})
    assert not (tmp_path / "none.json").exists()


def test_classified_raster_is_checked_before_scoring(tmp_path):
    from segearth_qgis.core.eval.classified import score_against_reference

    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 1
    reference = write_geotiff(tmp_path / "reference.tif", labels[None], nodata=255)
    classified = write_geotiff(tmp_path / "classes.tif", labels[None], nodata=255)
    dataset = gdal.Open(classified, gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(["field", "house"])
    dataset = None
    report = score_against_reference(classified, reference).as_dict()
    assert [c["name"] for c in report["classes"]] == ["field", "house"]
    assert report["miou"] == pytest.approx(100.0)

    photo = write_geotiff(tmp_path / "photo.tif", scene_bands(8, 8),
                          color_interp=(gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand))
    with pytest.raises(RasterInputError) as raised:
        score_against_reference(photo, reference)
    assert str(raised.value) == (f"{photo} looks like an RGB image, not a classified raster: give the classified "
                                 "output of segment")
    scores = write_geotiff(tmp_path / "scores.tif", np.full((1, 8, 8), 1e9, np.float32))
    with pytest.raises(RasterInputError, match="holds Float32 values, not class ids"):
        score_against_reference(scores, reference)
    empty = write_geotiff(tmp_path / "empty.tif", np.full((1, 8, 8), 255, np.uint8), nodata=255)
    with pytest.raises(RasterInputError, match="has no valid pixels"):
        score_against_reference(empty, reference)
