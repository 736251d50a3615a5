"""Accuracy against reference labels as the papers measure it (mmseg's IoUMetric), for the CLI and segearth:evaluate."""

import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from ..common.choices import EVALUATION_PIPELINES
from ..common.feedback import as_feedback
from ..common.files import atomic_write, temporary_sibling
from ..gis.raster import (
    GTIFF_OPTIONS,
    LABEL_NODATA,
    RasterInputError,
    Stretch,
    check_bands,
    open_raster,
    read_valid,
    robust_stretch,
)
from ..gis.style import class_colors, qml_path, raster_qml
from ..method.resize import resize_bilinear
from ..method.segment import classify, segment_image
from ..method.vocabulary import BACKGROUND_NAMES, UNCLASSIFIED
from ..pipeline import SegmentOutputs, model_gba_lambda, resolve_options, segment_raster

IGNORED = -1                  # a decoded label that is not scored
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".jp2", ".webp", ".img", ".vrt"}
BLOCK_PIXELS = 1 << 22        # pixels per block when a classified raster is scored in strips
METRIC = ("mmseg IoUMetric: one confusion matrix accumulated over all images; per class IoU = TP / (TP + FP + FN) "
          "and accuracy = TP / reference pixels; mIoU and mAcc average the classes whose value is defined (a class "
          "absent from both labels and predictions has no IoU); aAcc (pixel accuracy) = TP / scored pixels")


class LabelError(ValueError):
    """Labels that cannot be scored; the message names the values and what to do."""


class LabelEncoding:
    """How stored label values become class indices, or IGNORED.

    A value the label map names gets that entry's target (a class index, a class name or ``ignore``; the first
    matching entry wins). Other numbers follow mmseg: the ignore index is not scored, and ``reduce_zero_label``
    ignores 0 and moves every other value down by one. Other text (a polygon layer's class field) is matched against
    the class names and ``aliases`` (per class, e.g. the vocabulary's synonyms), in any case.
    """

    def __init__(self, class_names, ignore_index=255, reduce_zero_label=False, label_map=None, aliases=None):
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.label_map = (label_map or "").strip()
        self._names = {}
        for index, name in enumerate(self.class_names):
            for alias in (name, *(aliases[index] if aliases else ())):
                self._names.setdefault(alias.strip().lower(), index)
        self._ranges, self._texts = [], {}
        for entry in (e.strip() for e in re.split(r"[,;\n]", self.label_map)):
            if not entry:
                continue
            source, separator, target = (part.strip() for part in entry.rpartition(":"))
            if not separator or not source or not target:
                raise LabelError(f"label map entry {entry!r} is not VALUE:CLASS; e.g. '255:1', '128-255:1', "
                                 "'forest:tree' or '0:ignore'")
            target = self._target(target)
            numbers = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", source)
            if numbers:
                low, high = int(numbers[1]), int(numbers[2] or numbers[1])
                if high < low:
                    raise LabelError(f"label map range {source!r} runs backwards: write LOW-HIGH")
                self._ranges.append((low, high, target))
            else:
                self._texts.setdefault(source.lower(), target)

    def _target(self, text):
        if text.lower() == "ignore":
            return IGNORED
        if text.isdigit():
            index = int(text)
            if index == self.ignore_index:
                return IGNORED
            if index < len(self.class_names):
                return index
        elif text.lower() in self._names:
            return self._names[text.lower()]
        raise LabelError(f"label map target {text!r} is not a class index (0..{len(self.class_names) - 1}), a class "
                         f"name ({', '.join(self.class_names)}) or 'ignore'")

    def value(self, raw):
        """The class index of one stored value, IGNORED, or None when it is neither."""
        if isinstance(raw, str):
            key = raw.strip().lower()
            if key in self._texts:
                return self._texts[key]
            if key in self._names:
                return self._names[key]
            try:
                raw = float(key)
            except ValueError:
                return None
        number = float(raw)
        if not number.is_integer():
            return None
        number = int(number)
        for low, high, target in self._ranges:
            if low <= number <= high:
                return target
        if number == self.ignore_index:
            return IGNORED
        if self.reduce_zero_label:
            if number == 0:
                return IGNORED
            number -= 1
        return number if 0 <= number < len(self.class_names) else None

    def decode(self, raw, valid=None, where="the labels"):
        """int32 class indices (IGNORED: not scored) of a numeric label array; ``valid`` False (nodata) is ignored."""
        raw = np.asarray(raw)
        if raw.dtype.kind in "ui" and raw.size and raw.min() >= 0 and raw.max() < 1 << 20:
            values = np.flatnonzero(np.bincount(raw.ravel()))
            table = np.full(int(values[-1]) + 1, IGNORED, np.int32)
            unknown = [int(v) for v in values if self._store(table, v, v) is None]
            decoded = table[raw]
        else:
            values, inverse = np.unique(raw, return_inverse=True)
            table = np.full(len(values), IGNORED, np.int32)
            unknown = [v.item() for i, v in enumerate(values) if self._store(table, i, v.item()) is None]
            decoded = table[inverse].reshape(raw.shape)
        if valid is not None:
            decoded[~valid] = IGNORED
        if unknown:
            bad = np.isin(raw, unknown) if valid is None else np.isin(raw, unknown) & valid
            if bad.any():
                found = sorted({v.item() for v in np.unique(raw[bad])})
                raise LabelError(self.unknown_message(found, where))
        return decoded

    def _store(self, table, index, raw):
        target = self.value(raw)
        table[index] = IGNORED if target is None else target
        return target

    def unknown_message(self, values, where):
        shown = ", ".join(repr(v) if isinstance(v, str) else f"{v:g}" for v in values[:12])
        more = f" and {len(values) - 12} more" if len(values) > 12 else ""
        rule = (" after reduce_zero_label (0 ignored, the rest minus one)" if self.reduce_zero_label else "")
        return (f"{where}: values {shown}{more} are neither classes 0..{len(self.class_names) - 1} "
                f"({', '.join(self.class_names)}){rule} nor the ignore index {self.ignore_index}: map them with a "
                "label map (e.g. '128-255:1', '7:ignore', 'forest:tree'), or choose the preset whose labels these are")


class ConfusionMatrix:
    """Pixel counts by (reference class, predicted class), summed over images as mmseg's IoUMetric sums them.

    The extra last column holds reference pixels whose prediction is none of the classes (nodata, or a class the
    reference lacks such as an added 'unclassified'): they count against their reference class only, as mmseg's
    histogram drops predictions outside 0..n-1.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes + 1), np.int64)
        self.ignored = 0

    def add(self, reference, prediction):
        """``reference``: decoded labels (IGNORED is not scored); ``prediction``: class indices of the same shape."""
        n = self.num_classes
        reference = np.asarray(reference).ravel()
        scored = reference != IGNORED
        self.ignored += int(reference.size - np.count_nonzero(scored))
        truth = reference[scored].astype(np.int64)
        predicted = np.asarray(prediction).ravel()[scored].astype(np.int64)
        predicted[(predicted < 0) | (predicted >= n)] = n
        self.counts += np.bincount(truth * (n + 1) + predicted, minlength=n * (n + 1)).reshape(n, n + 1)

    def __iadd__(self, other):
        self.counts += other.counts
        self.ignored += other.ignored
        return self

    def scores(self):
        """Per class IoU and accuracy and the means, in percent; NaN where a value is undefined (0 / 0)."""
        n = self.num_classes
        intersection = np.diag(self.counts).astype(np.float64)
        reference = self.counts.sum(axis=1)
        predicted = self.counts[:, :n].sum(axis=0)
        union = reference + predicted - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = 100 * intersection / union
            accuracy = 100 * intersection / reference
            pixel_accuracy = 100 * intersection.sum() / reference.sum()
        return {"iou": iou, "accuracy": accuracy, "miou": _nanmean(iou), "macc": _nanmean(accuracy),
                "pixel_accuracy": float(pixel_accuracy), "intersection": intersection.astype(np.int64),
                "union": union.astype(np.int64), "reference": reference, "predicted": predicted,
                "unpredicted": self.counts[:, n]}


def _nanmean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _number(value):
    """JSON has no NaN: an undefined score is null."""
    value = float(value)
    return None if np.isnan(value) else value


@dataclass
class EvaluationReport:
    class_names: list
    confusion: ConfusionMatrix
    background_index: int = None        # a two-class set with a background reports the other class's IoU
    title: str = "SegEarth-OV evaluation"
    images: list = field(default_factory=list)    # per image: name, scored pixels, pixel accuracy, mIoU
    settings: dict = field(default_factory=dict)

    def add_image(self, name, confusion):
        self.confusion += confusion
        scores = confusion.scores()
        self.images.append({"image": name, "scored_pixels": int(scores["reference"].sum()),
                            "pixel_accuracy": _number(scores["pixel_accuracy"]), "miou": _number(scores["miou"])})

    @property
    def foreground_index(self):
        if len(self.class_names) == 2 and self.background_index in (0, 1):
            return 1 - self.background_index
        return None

    def as_dict(self):
        scores = self.confusion.scores()
        n = len(self.class_names)
        classes = [{"index": i, "name": name, "iou": _number(scores["iou"][i]),
                    "accuracy": _number(scores["accuracy"][i]), "reference_pixels": int(scores["reference"][i]),
                    "predicted_pixels": int(scores["predicted"][i]), "intersection": int(scores["intersection"][i]),
                    "union": int(scores["union"][i]), "unpredicted_pixels": int(scores["unpredicted"][i])}
                   for i, name in enumerate(self.class_names)]
        foreground = self.foreground_index
        return {"title": self.title, "metric": METRIC, "units": "percent", "miou": _number(scores["miou"]),
                "macc": _number(scores["macc"]), "pixel_accuracy": _number(scores["pixel_accuracy"]),
                "foreground_class": None if foreground is None else self.class_names[foreground],
                "foreground_iou": None if foreground is None else _number(scores["iou"][foreground]),
                "scored_pixels": int(scores["reference"].sum()), "ignored_pixels": int(self.confusion.ignored),
                "classes": classes, "confusion_matrix": self.confusion.counts[:, :n].tolist(),
                "images": self.images, "settings": self.settings}

    def table(self):
        """The per-class table and the summary, as printed by the CLI and logged by the algorithm."""
        report = self.as_dict()
        width = max(len(name) for name in [*self.class_names, "class"])

        def percent(value):
            return "n/a" if value is None else f"{value:.2f}"

        lines = [self.title, f"{'':>3} {'class':<{width}} {'IoU %':>7} {'Acc %':>7} {'reference px':>13} "
                             f"{'predicted px':>13}"]
        for entry in report["classes"]:
            lines.append(f"{entry['index']:>3} {entry['name']:<{width}} {percent(entry['iou']):>7} "
                         f"{percent(entry['accuracy']):>7} {entry['reference_pixels']:>13,} "
                         f"{entry['predicted_pixels']:>13,}")
        lines.append(f"mIoU {percent(report['miou'])} %   mAcc {percent(report['macc'])} %   aAcc (pixel accuracy) "
                     f"{percent(report['pixel_accuracy'])} %   {len(self.images)} image(s), "
                     f"{report['scored_pixels']:,} scored pixels, {report['ignored_pixels']:,} ignored")
        if report["foreground_class"] is not None:
            lines.append(f"foreground IoU ({report['foreground_class']}): {percent(report['foreground_iou'])} % "
                         "(what the single-class tables report)")
        unpredicted = sum(entry["unpredicted_pixels"] for entry in report["classes"])
        if unpredicted:
            lines.append(f"{unpredicted:,} labelled pixels have no prediction among these classes (nodata or "
                         "'unclassified'): they count as missed")
        return "\n".join(lines)

    def csv_text(self):
        text = io.StringIO()
        columns = ["index", "name", "iou", "accuracy", "reference_pixels", "predicted_pixels", "intersection",
                   "union", "unpredicted_pixels"]
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        for entry in self.as_dict()["classes"]:
            writer.writerow({k: "" if v is None else v for k, v in entry.items()})
        return text.getvalue()

    def write(self, json_path=None, csv_path=None, png_path=None, warn=print):
        """Write the report files that are asked for, each complete or not at all; returns {kind: path}."""
        written = {}
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            written["json"] = atomic_write(json_path, json.dumps(self.as_dict(), indent=1) + "\n")
        if csv_path:
            Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
            written["csv"] = atomic_write(csv_path, self.csv_text())
        if png_path:
            try:
                written["png"] = plot_confusion(png_path, self)
            except ImportError as error:
                warn(f"no confusion-matrix plot: {error} (install matplotlib: python3 -m pip install matplotlib)")
        return written


def plot_confusion(path, report):
    """The confusion matrix as a PNG: each reference row in percent of its pixels, the counts' shares annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(report.class_names)
    counts = report.confusion.counts
    predicted_names = list(report.class_names)
    if not counts[:, n].any():
        counts = counts[:, :n]
    else:
        predicted_names.append("no prediction")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(100.0 * counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = 2.5 + 0.5 * max(n, 4)
    figure = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=100)
    axes.set_xticks(range(len(predicted_names)), labels=predicted_names, rotation=45, ha="right")
    axes.set_yticks(range(n), labels=report.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    miou = report.confusion.scores()["miou"]
    axes.set_title(f"{report.title}\nmIoU {miou:.2f} %", fontsize=10)
    if n <= 20:
        for (row, column), value in np.ndenumerate(share):
            axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                      color="white" if value > 50 else "black")
    figure.colorbar(image, ax=axes, label="% of the reference class's pixels")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(path)
    try:
        figure.savefig(temp, format="png")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def report_classes(preset=None, vocabulary=None, category_names=None, background=None):
    """(class names, aliases per class, background index or None) of the classes the reference is scored on.

    With a preset whose vocabulary runs: its dataset's class names. With typed classes: their first synonyms. With
    neither, a classified raster's category names, less a trailing 'unclassified' (the class that segment adds for
    pixels below the threshold: no reference label can be it, so its pixels count as unpredicted).
    """
    if preset is not None and (vocabulary is None or vocabulary == preset.vocabulary):
        names = list(preset.dataset_class_names)
        return names, [preset.vocabulary.classes[i] for i in range(len(names))], preset.background_index
    if vocabulary is not None:
        _, index = vocabulary.background(background)
        return vocabulary.class_names, list(vocabulary.classes), index if index < len(vocabulary) else None
    names = list(category_names)
    if len(names) > 1 and names[-1] == UNCLASSIFIED:
        names.pop()
    index = next((i for i, name in enumerate(names) if name.strip().lower() in BACKGROUND_NAMES), None)
    return names, None, index


def score_classified_raster(classified, reference, encoding, feedback=None, class_field=None, layer_name=None):
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

            def truth(row, rows):
                return labels.GetRasterBand(1).ReadAsArray(0, row, width, rows).astype(np.int32)
        else:
            labels = open_raster(reference)
            if labels.RasterCount != 1:
                raise LabelError(f"{reference} has {labels.RasterCount} bands: labels are one band of class values "
                                 "(colour-coded labels need the dataset's converter first)")
            labels = aligned_reference(predictions, labels, folder)

            def truth(row, rows):
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


def _grid(dataset):
    transform = dataset.GetGeoTransform(can_return_null=True)
    return (tuple(transform) if transform else None), dataset.GetProjection()


def aligned_reference(predictions, reference, folder):
    """``reference`` on the classified raster's pixel grid: itself when the grids agree (or when rasters of the same
    size lack georeferencing, as benchmark tiles do), else a nearest-neighbour warp whose band 2 is its alpha."""
    size = (predictions.RasterXSize, predictions.RasterYSize)
    (transform, wkt), (ref_transform, ref_wkt) = _grid(predictions), _grid(reference)
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


def rasterize_polygons(predictions, path, class_field, encoding, folder, feedback, layer_name=None):
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
    transform, wkt = _grid(predictions)
    if transform is None:
        raise RasterInputError("the classified raster has no geotransform: polygons cannot be placed on it")
    labels.SetGeoTransform(transform)
    labels.SetProjection(wkt)
    labels.GetRasterBand(1).Fill(IGNORED)
    gdal.RasterizeLayer(labels, [1], burnt, options=["ATTRIBUTE=class"])
    return labels


def pair_files(images, labels, label_suffix="", split=None):
    """[(stem, image, label)] sorted by stem: images and labels pair by file name without extension, or the label's
    name less ``label_suffix`` (mmseg's seg_map_suffix, e.g. '_instance_color_RGB.png'). ``split``: a text file of
    the stems to use, one per line (mmseg's ann_file). An image without a label is an error that names them."""
    def rasters(folder, suffix=""):
        folder = Path(folder)
        if not folder.is_dir():
            raise RasterInputError(f"{folder} is not a folder")
        found = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in RASTER_SUFFIXES:
                continue
            if suffix and not path.name.endswith(suffix):
                continue
            found.setdefault(path.name[:-len(suffix)] if suffix else path.stem, []).append(path)
        twins = [paths for paths in found.values() if len(paths) > 1]
        if twins:
            raise RasterInputError(f"{folder} holds files of the same name with different extensions "
                                   f"({', '.join(p.name for p in twins[0])}): keep one of each")
        return {stem: paths[0] for stem, paths in found.items()}

    image_files, label_files = rasters(images), rasters(labels, label_suffix)
    if not image_files:
        raise RasterInputError(f"no images ({', '.join(sorted(RASTER_SUFFIXES))}) in {images}")
    if split:
        if not Path(split).is_file():
            raise RasterInputError(f"the split file {split} does not exist")
        stems = [Path(line.strip()).stem if Path(line.strip()).suffix.lower() in RASTER_SUFFIXES else line.strip()
                 for line in Path(split).read_text(encoding="utf-8").splitlines() if line.strip()]
        absent = [stem for stem in stems if stem not in image_files]
        if absent:
            raise RasterInputError(f"{len(absent)} of the {len(stems)} names in {split} have no image in {images}: "
                                   f"{', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
        image_files = {stem: image_files[stem] for stem in stems}
    missing = sorted(set(image_files) - set(label_files))
    if missing:
        shown = ", ".join(image_files[stem].name for stem in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise RasterInputError(f"{len(missing)} of {len(image_files)} images have no label of the same name in "
                               f"{labels}: {shown}{more}. Images and labels pair by file name without extension"
                               f"{' after the label suffix' if label_suffix else ''}; name labels like their images, "
                               "or give --label-suffix (e.g. '_instance_color_RGB.png')")
    return [(stem, image_files[stem], label_files[stem]) for stem in sorted(image_files)]


def read_image(path, modality="optical"):
    """A benchmark tile as uint8 HxWx3 RGB, as the reference loads it: 8-bit bands as they are (one band repeated);
    other optical data gets the plugin's once-per-raster 2-98 % stretch."""
    dataset = open_raster(path)
    bands = check_bands(dataset, None)
    stretch = robust_stretch(dataset)
    if stretch.limits is not None:
        if modality == "sar":
            raise RasterInputError(f"{path} is not 8-bit: the paper protocol reads 8-bit tiles, as the reference "
                                   "does; convert the radar tiles to 8 bits, or use --pipeline map on georeferenced "
                                   "rasters (the plugin's radar conversion)")
        stretch = Stretch(tuple(stretch.limits[b - 1] for b in bands))
    rgb = stretch.apply(np.stack([dataset.GetRasterBand(b).ReadAsArray() for b in bands]))
    if len(bands) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


def read_labels(path, encoding):
    """(decoded labels, dataset) of a one-band label raster; nodata pixels are not scored."""
    dataset = open_raster(path)
    if dataset.RasterCount != 1:
        raise LabelError(f"{path} has {dataset.RasterCount} bands: labels are one band of class values (colour-coded "
                         "labels need the dataset's converter first, e.g. SegEarth-OV's tools/dataset_converters)")
    raw = dataset.GetRasterBand(1).ReadAsArray()
    return encoding.decode(raw, read_valid(dataset, 0, 0, dataset.RasterXSize, dataset.RasterYSize), str(path)), \
        dataset


def write_prediction(path, labels, class_names, like):
    """Classes as a GeoTIFF with category names, colours and a .qml, on the grid of ``like`` (georeferenced only if
    ``like`` is); written under a temporary name and renamed."""
    path = Path(path)
    colors = class_colors(class_names)
    memory = gdal.GetDriverByName("MEM").Create("", labels.shape[1], labels.shape[0], 1, gdal.GDT_Byte)
    transform, wkt = _grid(like)
    if transform is not None and transform != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        memory.SetGeoTransform(transform)
    if wkt:
        memory.SetProjection(wkt)
    band = memory.GetRasterBand(1)
    band.WriteArray(labels.astype(np.uint8))
    band.SetNoDataValue(LABEL_NODATA)
    table = gdal.ColorTable()
    for index, color in enumerate(colors):
        table.SetColorEntry(index, (*color, 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetCategoryNames(list(class_names))
    temp = temporary_sibling(path)
    try:
        gdal.GetDriverByName("GTiff").CreateCopy(str(temp), memory, options=GTIFF_OPTIONS)
        aux = Path(f"{temp}.aux.xml")
        if aux.exists():
            os.replace(aux, f"{path}.aux.xml")
        os.replace(temp, path)
    finally:
        for leftover in (temp, Path(f"{temp}.aux.xml")):
            leftover.unlink(missing_ok=True)
    atomic_write(qml_path(path), raster_qml(class_names, colors))
    return path


def evaluate_dataset(images, labels, preset=None, classes=None, model=None, label_map=None, ignore_index=None,
                     reduce_zero_label=False, label_suffix="", split=None, resize_longer_side=None,
                     pipeline="paper", resolution=0.0, save_predictions=None, backend="auto", device="auto",
                     feedback=None):
    """Segment every image of folder ``images`` and score it against its label in ``labels``; an EvaluationReport.

    ``pipeline="paper"`` runs each image as the papers did: ``segment_image`` in pixel space with the preset's resize
    (``resize_longer_side`` overrides it), window (or whole image) and threshold, the logits then resized to the
    label's size and classified.
    ``pipeline="map"`` runs ``segment_raster`` (what segearth:segment runs: georeferenced rasters of any size, native
    pixels or ``resolution`` metres) and scores on the classified grid. ``classes`` replace the preset's, as in
    segment. ``model``: a loaded model, a bundle path, or None for the installed default of the modality.
    ``reduce_zero_label`` True or the preset's turns it on. ``label_suffix``, ``split``: see ``pair_files``.
    ``save_predictions``: a folder for <stem>.tif.
    Nothing is left of this run's predictions when it fails or is cancelled.
    """
    from ..method.presets import load_preset

    if pipeline not in EVALUATION_PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(EVALUATION_PIPELINES)}, not {pipeline!r}")
    feedback = as_feedback(feedback)
    pairs = pair_files(images, labels, label_suffix, split)
    model_path = model if isinstance(model, str | Path) else None
    options, modality, notes = resolve_options(classes=classes, preset=preset, model_path=model_path,
                                               resolution=resolution)
    chosen = load_preset(preset) if preset else None
    names, aliases, background_index = report_classes(chosen, options.vocabulary, background=options.background)
    if ignore_index is None:
        ignore_index = chosen.ignore_index if chosen else LABEL_NODATA
    encoding = LabelEncoding(names, ignore_index, reduce_zero_label or bool(chosen and chosen.reduce_zero_label),
                             label_map, aliases)
    predicted_names, predicted_background = options.vocabulary.background(options.background)
    if not isinstance(model, str | Path | None):
        loaded = model
    else:
        from ..runtime.loader import load_model

        loaded = load_model(model_path, modality, backend, device)
    options = replace(options, gba_lambda=model_gba_lambda(loaded, options))
    resize = resize_longer_side or (chosen.resize_longer_side if chosen else 448)
    window, stride = (chosen.window, chosen.stride) if chosen else (options.window, options.stride)
    for note in notes:
        feedback.info(note)
    feedback.info(f"runtime: {getattr(loaded, 'runtime', 'in-memory model')}")
    _check_model(loaded, chosen, feedback)
    report = EvaluationReport(names, ConfusionMatrix(len(names)), background_index)
    if chosen:
        report.title = chosen.title
    report.settings = {
        "preset": chosen.name if chosen else None, "classes": options.vocabulary.to_text(),
        "threshold": options.threshold, "background": predicted_names[predicted_background],
        "gba_lambda": options.gba_lambda, "pipeline": pipeline, "ignore_index": encoding.ignore_index,
        "reduce_zero_label": encoding.reduce_zero_label, "label_map": encoding.label_map,
        "images": str(images), "labels": str(labels), "label_suffix": label_suffix,
        "split": str(split) if split else None,
        "model": str(getattr(loaded, "bundle", None) or model_path or "in-memory model"),
        "runtime": str(getattr(loaded, "runtime", "")),
        **({"resize_longer_side": resize, "window": window, "stride": stride} if pipeline == "paper" else
           {"resolution": resolution, "window": options.window, "stride": options.stride})}
    device_name = getattr(getattr(loaded, "runtime", None), "device", "cpu")
    batch_size = 16 if device_name == "cuda" else 4
    feedback.info(f"{len(pairs)} image(s); classes: {', '.join(names)}; ignore index {encoding.ignore_index}"
                  f"{', reduce_zero_label' if encoding.reduce_zero_label else ''}"
                  f"{f', label map {encoding.label_map}' if encoding.label_map else ''}")
    saved = []
    folder = Path(save_predictions) if save_predictions else None
    try:
        with tempfile.TemporaryDirectory(prefix="segearth-evaluate-") as scratch:
            for number, (stem, image, label) in enumerate(pairs):
                feedback.check_cancel()
                part = feedback.part(number / len(pairs), 1 / len(pairs), info=False)
                target = (folder / f"{stem}.tif") if folder else Path(scratch) / f"{stem}.tif"
                confusion = ConfusionMatrix(len(names))
                if pipeline == "paper":
                    reference, label_dataset = read_labels(label, encoding)
                    result = segment_image(loaded, read_image(image, modality), options.vocabulary,
                                           gba_lambda=options.gba_lambda, resize_longer_side=resize, window=window,
                                           stride=stride, batch_size=batch_size,
                                           progress=lambda done, total, part=part: part.progress(done / total),
                                           cancelled=feedback.cancelled)
                    _, predicted = classify(resize_bilinear(result.logits, *reference.shape),
                                            options.vocabulary.query_class, options.threshold, predicted_background)
                    confusion.add(reference, predicted)
                    if folder:
                        folder.mkdir(parents=True, exist_ok=True)
                        saved.append(write_prediction(target, predicted, predicted_names, label_dataset))
                else:
                    if folder:
                        saved.append(target)
                    segment_raster(loaded, image, SegmentOutputs(str(target)), options,
                                   part.part(0.0, 0.9))
                    confusion = score_classified_raster(target, label, encoding, part.part(0.9, 0.1))
                report.add_image(stem, confusion)
                scores = confusion.scores()
                feedback.info(f"{stem}: mIoU {scores['miou']:.2f} %, pixel accuracy {scores['pixel_accuracy']:.2f} %")
    except BaseException:
        for path in saved:
            for leftover in (Path(path), Path(f"{path}.aux.xml"), qml_path(path)):
                leftover.unlink(missing_ok=True)
        raise
    if not report.confusion.counts.any():
        raise LabelError(f"the labels in {labels} mark no pixel to score (all ignored or nodata): check the ignore "
                         "index, reduce_zero_label and the label map")
    return report


def _check_model(model, preset, feedback):
    """Warn when the bundle's attention differs from the preset's: its scores will not be the paper's."""
    manifest = getattr(model, "manifest", None) or {}
    if preset is None or "attention" not in manifest:
        return
    if (manifest["attention"], manifest.get("last_n")) != (preset.attention, preset.last_n):
        feedback.warn(f"preset {preset.name} was evaluated with {preset.attention} attention on the last "
                      f"{preset.last_n} block(s); this model runs {manifest['attention']} on the last "
                      f"{manifest.get('last_n')}: its scores are not the paper's setting")
