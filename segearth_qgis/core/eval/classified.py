"""A classified raster scored on its grid against a label raster or polygons: segearth:evaluate, the map pipeline."""

import os
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from ..common.feedback import Feedback, as_feedback
from ..gis.raster import GTIFF_OPTIONS, LABEL_NODATA, RasterInputError, open_raster, read_class_table, read_valid
from ..method.presets import load_preset
from .metric import IGNORED, ConfusionMatrix, EvaluationReport, LabelEncoding, LabelError, report_classes

BLOCK_PIXELS = 1 << 22        # pixels per block when a classified raster is scored in strips


def score_classified_raster(classified: Path | str, reference: Path | str, encoding: LabelEncoding,
                            feedback: Feedback | None = None, class_field: str | None = None,
                            layer_name: str | None = None) -> ConfusionMatrix:
    """The confusion matrix of classified raster ``classified`` (band 1) against ``reference`` on its pixel grid.

    ``reference`` is a one-band label raster (warped with nearest neighbour when its grid differs) or, with
    ``class_field``, a polygon layer burnt at pixel centres (pixels no polygon covers are not scored). Streams in row
    blocks; reference nodata is not scored, classified nodata counts as no prediction.
    """
    feedback = as_feedback(feedback)
    predictions = open_raster(classified)
    width, height = predictions.RasterXSize, predictions.RasterYSize
    with tempfile.TemporaryDirectory(prefix="segearth-evaluate-") as folder:
        if class_field:
            labels = rasterize_polygons(predictions, reference, class_field, encoding, folder, feedback, layer_name)

            def truth(row: int, rows: int) -> np.ndarray:
                return labels.GetRasterBand(1).ReadAsArray(0, row, width, rows).astype(np.int32)
        else:
            labels = open_raster(reference)
            if labels.RasterCount != 1:
                raise LabelError(f"{reference} has {labels.RasterCount} bands: labels are one band of class values "
                                 "(colour-coded labels need the dataset's converter first)")
            labels = aligned_reference(predictions, labels, folder)

            def truth(row: int, rows: int) -> np.ndarray:
                raw = labels.GetRasterBand(1).ReadAsArray(0, row, width, rows)
                valid = read_valid(labels, 0, row, width, rows) if labels.RasterCount == 1 else \
                    labels.GetRasterBand(2).ReadAsArray(0, row, width, rows) > 0
                return encoding.decode(raw, valid, str(reference))

        confusion = ConfusionMatrix(len(encoding.class_names))
        step = max(1, BLOCK_PIXELS // width)
        for row in range(0, height, step):
            feedback.check_cancel()
            rows = min(step, height - row)
            predicted = predictions.GetRasterBand(1).ReadAsArray(0, row, width, rows).astype(np.int64)
            predicted[~read_valid(predictions, 0, row, width, rows)] = -1
            confusion.add(truth(row, rows), predicted)
            feedback.progress((row + rows) / height)
        labels = None
    return confusion


def georeferencing(dataset: gdal.Dataset) -> tuple[tuple | None, str]:
    """(geotransform or None where the raster has none, CRS as WKT or '')."""
    transform = dataset.GetGeoTransform(can_return_null=True)
    return (tuple(transform) if transform else None), dataset.GetProjection()


def aligned_reference(predictions: gdal.Dataset, reference: gdal.Dataset, folder: str) -> gdal.Dataset:
    """``reference`` on the classified raster's pixel grid: itself when the grids agree (or when rasters of the same
    size lack georeferencing, as benchmark tiles do), else a nearest-neighbour warp whose band 2 is its alpha."""
    size = (predictions.RasterXSize, predictions.RasterYSize)
    (transform, wkt), (ref_transform, ref_wkt) = georeferencing(predictions), georeferencing(reference)
    same_crs = not wkt or not ref_wkt or osr.SpatialReference(wkt).IsSame(osr.SpatialReference(ref_wkt))
    if (reference.RasterXSize, reference.RasterYSize) == size and (
            transform is None or ref_transform is None or
            (same_crs and np.allclose(transform, ref_transform, rtol=0, atol=1e-6 * abs(transform[1])))):
        return reference
    if transform is None or ref_transform is None or not wkt or not ref_wkt:
        raise RasterInputError(f"the reference ({reference.RasterXSize} x {reference.RasterYSize} px) and the "
                               f"classified raster ({size[0]} x {size[1]} px) are on different grids and one of them "
                               "lacks a geotransform or CRS to align them: georeference both, or give labels of the "
                               "same size")
    aligned = gdal.GetDriverByName("GTiff").Create(os.path.join(folder, "reference.tif"), *size, 2,
                                                   reference.GetRasterBand(1).DataType, GTIFF_OPTIONS)
    aligned.SetGeoTransform(transform)
    aligned.SetProjection(wkt)
    gdal.Warp(aligned, reference, resampleAlg="near", dstAlpha=True)
    return aligned


def rasterize_polygons(predictions: gdal.Dataset, path: Path | str, class_field: str, encoding: LabelEncoding,
                       folder: str, feedback: Feedback, layer_name: str | None = None) -> gdal.Dataset:
    """The polygons' classes burnt onto the classified raster's grid (GDAL rasterize at pixel centres; later polygons
    win where they overlap; polygons in another CRS are reprojected). Pixels no polygon covers stay IGNORED."""
    source = ogr.Open(str(path))
    if source is None:
        raise RasterInputError(f"OGR cannot open {path}")
    layer = source.GetLayerByName(layer_name) if layer_name else source.GetLayer(0)
    definition = layer.GetLayerDefn()
    index = definition.GetFieldIndex(class_field)
    if index < 0:
        fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        raise LabelError(f"{path} has no field {class_field!r}; its fields: {', '.join(fields) or 'none'}")
    memory = ogr.GetDriverByName("Memory").CreateDataSource("reference")
    burnt = memory.CreateLayer("reference", layer.GetSpatialRef(), ogr.wkbUnknown)
    burnt.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    targets, unknown, without_value = {}, set(), 0
    for feature in layer:
        geometry, value = feature.GetGeometryRef(), feature.GetField(index)
        if geometry is None:
            continue
        if value is None:
            without_value += 1
            continue
        if value not in targets:
            targets[value] = encoding.value(value)
        if targets[value] is None:
            unknown.add(value)
            continue
        copy = ogr.Feature(burnt.GetLayerDefn())
        copy.SetGeometry(geometry)
        copy.SetField("class", targets[value])
        burnt.CreateFeature(copy)
    if unknown:
        raise LabelError(encoding.unknown_message(sorted(unknown, key=str), f"{path} field {class_field}"))
    if without_value:
        feedback.warn(f"{without_value} polygon(s) have no {class_field} value: their pixels are not scored")
    labels = gdal.GetDriverByName("GTiff").Create(os.path.join(folder, "reference.tif"), predictions.RasterXSize,
                                                  predictions.RasterYSize, 1, gdal.GDT_Int16, GTIFF_OPTIONS)
    transform, wkt = georeferencing(predictions)
    if transform is None:
        raise RasterInputError("the classified raster has no geotransform: polygons cannot be placed on it")
    labels.SetGeoTransform(transform)
    labels.SetProjection(wkt)
    labels.GetRasterBand(1).Fill(IGNORED)
    gdal.RasterizeLayer(labels, [1], burnt, options=["ATTRIBUTE=class"])
    return labels


def score_against_reference(classified: Path | str, reference: Path | str, preset_name: str | None = None,
                            label_map: str | None = None, ignore_index: int | None = None,
                            reduce_zero_label: bool = False, class_field: str | None = None,
                            layer_name: str | None = None, feedback: Feedback | None = None) -> EvaluationReport:
    """The report of classified raster ``classified`` against ``reference`` (see ``score_classified_raster``), as
    segearth:evaluate gives it; its table goes to the log.

    The classes are the preset's, else the classified raster's categories (less a trailing 'unclassified'); the
    ignore index defaults to the preset's, else 255; ``reduce_zero_label`` True or the preset's turns it on. A
    raster that is no classified map (``check_class_raster``) is a RasterInputError; a reference that marks no pixel
    to score is a LabelError.
    """
    feedback = as_feedback(feedback)
    stored_names = read_class_table(classified)[0]       # checks that it is a classified raster, before any work
    preset = load_preset(preset_name) if preset_name else None
    names, aliases, background = report_classes(preset, category_names=stored_names)
    if ignore_index is None:
        ignore_index = preset.ignore_index if preset else LABEL_NODATA
    encoding = LabelEncoding(names, ignore_index, reduce_zero_label or bool(preset and preset.reduce_zero_label),
                             label_map, aliases)
    feedback.info(f"classes: {', '.join(names)}; ignore index {encoding.ignore_index}"
                  f"{', reduce_zero_label' if encoding.reduce_zero_label else ''}")
    confusion = score_classified_raster(classified, reference, encoding, feedback, class_field=class_field,
                                        layer_name=layer_name)
    if not confusion.counts.any():
        raise LabelError(f"the reference labels no pixel of {classified} (all ignored, nodata or outside it): check "
                         "its extent and CRS, the ignore index and the label map")
    report = EvaluationReport(names, ConfusionMatrix(len(names)), background)
    if preset:
        report.title = preset.title
    report.add_image(Path(classified).stem, confusion)
    report.settings = {"classified": str(classified), "reference": str(reference), "class_field": class_field,
                       "preset": preset_name, "ignore_index": encoding.ignore_index,
                       "reduce_zero_label": encoding.reduce_zero_label, "label_map": encoding.label_map}
    for line in report.table().splitlines():
        feedback.info(line)
    return report
