"""A model scored on a labelled folder of images, as the papers ran it or through the map pipeline (CLI evaluate)."""

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from osgeo import gdal

from ..common import signals
from ..common.choices import EVALUATION_PIPELINES
from ..common.feedback import Feedback, as_feedback
from ..common.files import atomic_write, temporary_sibling
from ..common.outputs import check_output_paths
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
from ..method.presets import Preset, load_preset
from ..method.resize import resize_bilinear
from ..method.segment import classify, segment_image
from ..pipeline import SegmentOptions, SegmentOutputs, model_gba_lambda, resolve_options, segment_raster
from .classified import georeferencing, score_classified_raster
from .metric import ConfusionMatrix, EvaluationReport, LabelEncoding, LabelError, report_classes

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".jp2", ".webp", ".img", ".vrt"}


def pair_files(images: Path | str, labels: Path | str, label_suffix: str = "",
               split: Path | str | None = None) -> list[tuple[str, Path, Path]]:
    """[(stem, image, label)] sorted by stem: images and labels pair by file name without extension, or the label's
    name less ``label_suffix`` (mmseg's seg_map_suffix, e.g. '_instance_color_RGB.png'). ``split``: a text file of
    the stems to use, one per line (mmseg's ann_file). An image without a label is an error that names them."""
    def rasters(folder: Path | str, suffix: str = "") -> dict[str, Path]:
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


def read_image(path: Path | str, modality: str = "optical") -> np.ndarray:
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


def read_labels(path: Path | str, encoding: LabelEncoding) -> tuple[np.ndarray, gdal.Dataset]:
    """(decoded labels, dataset) of a one-band label raster; nodata pixels are not scored."""
    dataset = open_raster(path)
    if dataset.RasterCount != 1:
        raise LabelError(f"{path} has {dataset.RasterCount} bands: labels are one band of class values (colour-coded "
                         "labels need the dataset's converter first, e.g. SegEarth-OV's tools/dataset_converters)")
    raw = dataset.GetRasterBand(1).ReadAsArray()
    return encoding.decode(raw, read_valid(dataset, 0, 0, dataset.RasterXSize, dataset.RasterYSize), str(path)), \
        dataset


def write_prediction(path: Path | str, labels: np.ndarray, class_names: list[str], like: gdal.Dataset) -> Path:
    """Classes as a GeoTIFF with category names, colours and a .qml, on the grid of ``like`` (georeferenced only if
    ``like`` is); written under a temporary name and renamed."""
    path = Path(path)
    colors = class_colors(class_names)
    memory = gdal.GetDriverByName("MEM").Create("", labels.shape[1], labels.shape[0], 1, gdal.GDT_Byte)
    transform, wkt = georeferencing(like)
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
    aux = Path(f"{temp}.aux.xml")
    try:
        with signals.in_flight(temp, aux):
            gdal.GetDriverByName("GTiff").CreateCopy(str(temp), memory, options=GTIFF_OPTIONS)
            if aux.exists():
                os.replace(aux, f"{path}.aux.xml")
            os.replace(temp, path)
    finally:
        for leftover in (temp, aux):
            leftover.unlink(missing_ok=True)
    atomic_write(qml_path(path), raster_qml(class_names, colors))
    return path


@dataclass
class EvaluationSettings:
    """What ``evaluate_dataset`` runs and how it reads the labels."""

    preset: str | None = None
    classes: str | None = None                      # one class a line, synonyms after commas; replaces the preset's
    model: object = None                            # a loaded model, a bundle path, or None: the installed default
    label_map: str | None = None                    # see LabelEncoding
    ignore_index: int | None = None                 # None: the preset's, else 255
    reduce_zero_label: bool = False                 # True, or the preset's, turns it on
    label_suffix: str = ""                          # see pair_files
    split: Path | str | None = None                 # see pair_files
    resize_longer_side: int | None = None           # paper: None is the preset's, else 448
    pipeline: str = "paper"                         # one of EVALUATION_PIPELINES
    resolution: float = 0.0                         # map: processing resolution in metres, 0 native
    save_predictions: Path | str | None = None      # a folder for <stem>.tif
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"


@dataclass
class ResolvedEvaluation:
    """The settings resolved once for every image: the loaded model, the segment options, the label encoding."""

    model: object                                   # a loaded model (onnx or torch backend)
    options: SegmentOptions
    modality: str
    preset: Preset | None
    encoding: LabelEncoding
    background_index: int | None                    # of the reference classes
    predicted_names: list[str]                      # the classes predictions hold, as segment writes them
    predicted_background: int                       # of the predicted classes: pixels below the threshold
    model_path: Path | str | None
    notes: list[str]

    @property
    def class_names(self) -> list[str]:
        return self.encoding.class_names


def _resolve(settings: EvaluationSettings) -> ResolvedEvaluation:
    """The options and classes of the preset or the typed classes, the label encoding, then the model."""
    model_path = settings.model if isinstance(settings.model, str | Path) else None
    options, modality, notes = resolve_options(classes=settings.classes, preset=settings.preset,
                                               model_path=model_path, resolution=settings.resolution)
    chosen = load_preset(settings.preset) if settings.preset else None
    names, aliases, background_index = report_classes(chosen, options.vocabulary, background=options.background)
    ignore_index = settings.ignore_index
    if ignore_index is None:
        ignore_index = chosen.ignore_index if chosen else LABEL_NODATA
    encoding = LabelEncoding(names, ignore_index,
                             settings.reduce_zero_label or bool(chosen and chosen.reduce_zero_label),
                             settings.label_map, aliases)
    predicted_names, predicted_background = options.vocabulary.background(options.background)
    if not isinstance(settings.model, str | Path | None):
        loaded = settings.model
    else:
        from ..runtime.loader import load_model

        loaded = load_model(model_path, modality, settings.backend, settings.device, settings.precision)
    options = replace(options, gba_lambda=model_gba_lambda(loaded, options))
    return ResolvedEvaluation(loaded, options, modality, chosen, encoding, background_index, predicted_names,
                              predicted_background, model_path, notes)


class _Scorer:
    """What the scorers share: the resolved evaluation, and the predictions saved so far (a failed run removes
    them)."""

    def __init__(self, evaluation: ResolvedEvaluation, settings: EvaluationSettings) -> None:
        self.evaluation = evaluation
        self.folder = Path(settings.save_predictions) if settings.save_predictions else None
        self.saved: list[Path] = []


class PaperScorer(_Scorer):
    """As the papers ran it: ``segment_image`` in pixel space with the preset's resize (``resize_longer_side``
    overrides it), window (or whole image) and threshold, the logits then resized to the label's size and
    classified."""

    def __init__(self, evaluation: ResolvedEvaluation, settings: EvaluationSettings) -> None:
        super().__init__(evaluation, settings)
        preset, options = evaluation.preset, evaluation.options
        self.resize = settings.resize_longer_side or (preset.resize_longer_side if preset else 448)
        self.window, self.stride = (preset.window, preset.stride) if preset else (options.window, options.stride)
        device = getattr(getattr(evaluation.model, "runtime", None), "device", "cpu")
        self.batch_size = 16 if device == "cuda" else 4

    def reported_settings(self) -> dict:
        return {"resize_longer_side": self.resize, "window": self.window, "stride": self.stride}

    def score(self, image: Path, label: Path, prediction: Path, feedback: Feedback) -> ConfusionMatrix:
        evaluation, options = self.evaluation, self.evaluation.options
        reference, label_dataset = read_labels(label, evaluation.encoding)
        result = segment_image(evaluation.model, read_image(image, evaluation.modality), options.vocabulary,
                               gba_lambda=options.gba_lambda, resize_longer_side=self.resize, window=self.window,
                               stride=self.stride, batch_size=self.batch_size,
                               progress=lambda done, total: feedback.progress(done / total),
                               cancelled=feedback.cancelled)
        _, predicted = classify(resize_bilinear(result.logits, *reference.shape), options.vocabulary.query_class,
                                options.threshold, evaluation.predicted_background)
        confusion = ConfusionMatrix(len(evaluation.class_names))
        confusion.add(reference, predicted)
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.saved.append(write_prediction(prediction, predicted, evaluation.predicted_names, label_dataset))
        return confusion


class MapScorer(_Scorer):
    """Through the map pipeline: ``segment_raster`` as segearth:segment runs it (georeferenced rasters of any size,
    native pixels or ``resolution`` metres), scored on the classified grid."""

    def __init__(self, evaluation: ResolvedEvaluation, settings: EvaluationSettings) -> None:
        super().__init__(evaluation, settings)
        self.resolution = settings.resolution

    def reported_settings(self) -> dict:
        options = self.evaluation.options
        return {"resolution": self.resolution, "window": options.window, "stride": options.stride}

    def score(self, image: Path, label: Path, prediction: Path, feedback: Feedback) -> ConfusionMatrix:
        if self.folder:
            self.saved.append(prediction)
        segment_raster(self.evaluation.model, image, SegmentOutputs(str(prediction)), self.evaluation.options,
                       feedback.part(0.0, 0.9))
        return score_classified_raster(prediction, label, self.evaluation.encoding, feedback.part(0.9, 0.1))


SCORERS = {"paper": PaperScorer, "map": MapScorer}    # by EVALUATION_PIPELINES name


def _empty_report(evaluation: ResolvedEvaluation, scorer: PaperScorer | MapScorer, settings: EvaluationSettings,
                  images: Path | str, labels: Path | str) -> EvaluationReport:
    """The report with its title and settings, before any image is scored."""
    preset, options, encoding = evaluation.preset, evaluation.options, evaluation.encoding
    names = evaluation.class_names
    report = EvaluationReport(names, ConfusionMatrix(len(names)), evaluation.background_index)
    if preset:
        report.title = preset.title
    model = evaluation.model
    report.settings = {
        "preset": preset.name if preset else None, "classes": options.vocabulary.to_text(),
        "threshold": options.threshold, "background": evaluation.predicted_names[evaluation.predicted_background],
        "gba_lambda": options.gba_lambda, "pipeline": settings.pipeline, "ignore_index": encoding.ignore_index,
        "reduce_zero_label": encoding.reduce_zero_label, "label_map": encoding.label_map,
        "images": str(images), "labels": str(labels), "label_suffix": settings.label_suffix,
        "split": str(settings.split) if settings.split else None,
        "model": str(getattr(model, "bundle", None) or evaluation.model_path or "in-memory model"),
        "runtime": str(getattr(model, "runtime", "")), **scorer.reported_settings()}
    return report


def _score_images(report: EvaluationReport, pairs: list[tuple[str, Path, Path]], scorer: PaperScorer | MapScorer,
                  feedback: Feedback) -> None:
    """Score every (stem, image, label) into ``report``; what the scorer saved is removed when this fails."""
    folder = scorer.folder
    try:
        with tempfile.TemporaryDirectory(prefix="segearth-evaluate-") as scratch:
            for number, (stem, image, label) in enumerate(pairs):
                feedback.check_cancel()
                part = feedback.part(number / len(pairs), 1 / len(pairs), info=False)
                prediction = (folder / f"{stem}.tif") if folder else Path(scratch) / f"{stem}.tif"
                confusion = scorer.score(image, label, prediction, part)
                report.add_image(stem, confusion)
                scores = confusion.scores()
                feedback.info(f"{stem}: mIoU {scores['miou']:.2f} %, pixel accuracy {scores['pixel_accuracy']:.2f} %")
    except BaseException:
        for path in scorer.saved:
            for leftover in (Path(path), Path(f"{path}.aux.xml"), qml_path(path)):
                leftover.unlink(missing_ok=True)
        raise


def evaluate_dataset(images: Path | str, labels: Path | str, settings: EvaluationSettings | None = None,
                     feedback: Feedback | None = None) -> EvaluationReport:
    """Segment every image of folder ``images`` and score it against its label in ``labels``; an EvaluationReport.

    ``settings.pipeline`` picks the scorer: "paper" (``PaperScorer``) or "map" (``MapScorer``). ``classes`` replace
    the preset's, as in segment. ``model``: a loaded model, a bundle path, or None for the installed default of the
    modality. Nothing is left of this run's predictions when it fails or is cancelled.
    """
    settings = settings or EvaluationSettings()
    scorer_type = SCORERS.get(settings.pipeline)
    if scorer_type is None:
        raise ValueError(f"pipeline must be one of {', '.join(EVALUATION_PIPELINES)}, not {settings.pipeline!r}")
    feedback = as_feedback(feedback)
    pairs = pair_files(images, labels, settings.label_suffix, settings.split)
    if settings.save_predictions:
        check_output_paths({"images and labels": [path for _, image, label in pairs for path in (image, label)]},
                           {f"the prediction of {stem}": Path(settings.save_predictions) / f"{stem}.tif"
                            for stem, _, _ in pairs})
    evaluation = _resolve(settings)
    for note in evaluation.notes:
        feedback.info(note)
    feedback.info(f"runtime: {getattr(evaluation.model, 'runtime', 'in-memory model')}")
    _check_model(evaluation.model, evaluation.preset, feedback)
    scorer = scorer_type(evaluation, settings)
    report = _empty_report(evaluation, scorer, settings, images, labels)
    encoding = evaluation.encoding
    feedback.info(f"{len(pairs)} image(s); classes: {', '.join(evaluation.class_names)}; ignore index "
                  f"{encoding.ignore_index}{', reduce_zero_label' if encoding.reduce_zero_label else ''}"
                  f"{f', label map {encoding.label_map}' if encoding.label_map else ''}")
    _score_images(report, pairs, scorer, feedback)
    if not report.confusion.counts.any():
        raise LabelError(f"the labels in {labels} mark no pixel to score (all ignored or nodata): check the ignore "
                         "index, reduce_zero_label and the label map")
    return report


def _check_model(model: object, preset: Preset | None, feedback: Feedback) -> None:
    """Warn when the bundle's attention differs from the preset's: its scores will not be the paper's."""
    manifest = getattr(model, "manifest", None) or {}
    if preset is None or "attention" not in manifest:
        return
    if (manifest["attention"], manifest.get("last_n")) != (preset.attention, preset.last_n):
        feedback.warn(f"preset {preset.name} was evaluated with {preset.attention} attention on the last "
                      f"{preset.last_n} block(s); this model runs {manifest['attention']} on the last "
                      f"{manifest.get('last_n')}: its scores are not the paper's setting")
