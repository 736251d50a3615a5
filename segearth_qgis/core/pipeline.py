"""The streaming GIS pipeline: any GDAL raster to a classified GeoTIFF, confidence, polygons and areas, in strips.

The sliding window runs over the whole processing grid exactly as ``segment_image`` runs over an array (same boxes,
same order, same padding), but one row of windows at a time: the logits of finished rows are averaged, upsampled to
the output grid with the same bilinear taps, classified and written, then dropped. Memory depends on the raster's
width, never on its height; there are no seams because no window is cut at a block border.
"""

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
from osgeo import gdal

from .common.feedback import CallbackFeedback, Cancelled, Feedback, as_feedback
from .common.files import atomic_write
from .gis.geo import AreaMeter
from .gis.raster import CONFIDENCE_NODATA, LABEL_NODATA, RasterInputError, RasterWriter, bounded_block_cache
from .gis.source import ProcessingSource
from .gis.style import class_colors, qml_path, raster_qml, vector_qml
from .method.model import SegmentationModel
from .method.resize import bilinear_taps, interpolate_taps
from .method.segment import classify
from .method.vocabulary import Vocabulary
from .method.windows import normalize, window_batches, window_boxes

OUTPUT_CHUNK_VALUES = 8 << 20   # floats per output chunk (queries x rows x width): about 32 MB


@dataclass
class SegmentOptions:
    vocabulary: Vocabulary
    threshold: float = 0.0
    background: str | None = None       # class name taking pixels below the threshold; see Vocabulary.background
    gba_lambda: float | None = None     # None: the model bundle's default (its manifest), else 0.3
    window: int = 224
    stride: int = 112
    batch_size: int | None = None       # None: 4 on the CPU, 16 on CUDA
    resolution: float = 0.0             # processing ground sample distance in metres; 0: native
    bands: tuple[int, ...] | None = None  # 1-based, three (R, G, B) or one (replicated)
    extent: tuple[float, float, float, float] | None = None  # (xmin, ymin, xmax, ymax) in the raster's CRS
    sensor: str = "optical"             # "optical" or "sar": how the raster is read (see ProcessingSource)
    polarisation: str | None = None     # SAR: a polarisation name or band number; None: VV, else band 1


@dataclass
class SegmentOutputs:
    classes: str                        # classified GeoTIFF
    confidence: str | None = None       # float32 GeoTIFF: probability of the winning class
    vector: str | None = None           # polygons (.gpkg, .shp, .geojson, .fgb)
    areas_csv: str | None = None
    simplify: float = 0.0               # polygon simplification tolerance, layer units
    min_area_m2: float = 0.0            # polygons smaller than this merge into their neighbour


@dataclass
class RasterSegmentation:
    class_names: list[str]
    background_index: int
    areas: list[dict]                   # per class: class_id, class_name, pixels, area_m2, percent
    windows: int
    skipped_windows: int
    seconds: float
    processing_size: tuple[int, int]    # (width, height) of the processing grid
    output_size: tuple[int, int]
    outputs: dict[str, str] = field(default_factory=dict)

    def areas_json(self) -> str:
        return json.dumps({"classes": self.areas, "total_m2": sum(a["area_m2"] for a in self.areas)})


def resolve_options(classes: str | None = None, preset: str | None = None, threshold: float | None = None,
                    background: str | None = None, gba_lambda: float | None = None, window: int | None = None,
                    stride: int | None = None, input_path: str | os.PathLike | None = None, sensor: str = "auto",
                    polarisation: str | None = None, model_path: str | os.PathLike | None = None,
                    **grid) -> tuple[SegmentOptions, str, list[str]]:
    """Merge a preset with explicit settings (explicit wins); returns (SegmentOptions, modality, notes).

    ``classes`` replaces the preset's classes (its background line then follows the ``background`` rule); the
    preset's threshold, lambda and window still apply unless given. ``modality`` is the sensor decided by
    ``sar.decide_sensor`` from ``sensor``, the bundle at ``model_path``, the preset and ``input_path`` (None: not a
    GDAL file); it picks the default model. ``grid``: resolution, bands, extent, batch_size.
    """
    from .gis.sar import decide_sensor
    from .method.presets import load_preset

    notes = []
    chosen = load_preset(preset) if preset else None
    if classes and classes.strip():
        vocabulary = Vocabulary.parse(classes)
    elif chosen is not None:
        vocabulary = chosen.vocabulary
        if background is None:
            background = chosen.vocabulary.classes[chosen.background_index][0]
    else:
        raise RasterInputError("type the classes to map (one per line, commas between synonyms, e.g. "
                               "'building,roof' then 'road'), or choose a preset")
    modality, reason = decide_sensor(input_path, sensor, model_modality(model_path),
                                     chosen.modality if chosen else None)
    notes.append(f"sensor: {reason}")
    if chosen is not None:
        notes.append(f"preset {chosen.name}: {chosen.title}")
        threshold = chosen.threshold if threshold is None else threshold
        gba_lambda = chosen.gba_lambda if gba_lambda is None else gba_lambda
        if chosen.window is None and window is None:
            notes.append(f"preset {chosen.name} evaluates whole {chosen.resize_longer_side}-px images; on a map "
                         "the sliding window (224 px, stride 112) is used instead")
        window = chosen.window if window is None else window
        stride = chosen.stride if stride is None else stride
    window = window or 224
    options = SegmentOptions(vocabulary, threshold=0.0 if threshold is None else threshold, background=background,
                             gba_lambda=gba_lambda, window=window, stride=stride or window // 2, sensor=modality,
                             polarisation=polarisation, **grid)
    return options, modality, notes


def model_modality(model_path: str | os.PathLike | None) -> str | None:
    """The modality in the manifest of the bundle at ``model_path``, or None when no bundle is given."""
    if not model_path:
        return None
    from .runtime.bundle import read_manifest, resolve_bundle

    return read_manifest(resolve_bundle(model_path))["modality"]


def model_gba_lambda(model: SegmentationModel, options: SegmentOptions) -> float:
    """The λ that runs: the explicit or preset value, else the bundle's default (its manifest), else 0.3."""
    if options.gba_lambda is not None:
        return options.gba_lambda
    value = (getattr(model, "manifest", None) or {}).get("gba_lambda")
    return 0.3 if value is None else float(value)


def _check_window(options: SegmentOptions, patch_size: int) -> None:
    if options.window < patch_size or options.stride <= 0 or options.stride > options.window:
        raise RasterInputError(f"window {options.window} and stride {options.stride} do not work: the window needs at "
                               f"least {patch_size} px and 0 < stride <= window (defaults 224 and 112)")


def segment_raster(model: SegmentationModel, input_path: str | os.PathLike, outputs: SegmentOutputs,
                   options: SegmentOptions, feedback: Feedback | None = None) -> RasterSegmentation:
    """Segment ``input_path`` into ``outputs``; returns a ``RasterSegmentation``. Nothing is left behind on failure."""
    with bounded_block_cache():
        return _segment_raster(model, input_path, outputs, options, as_feedback(feedback))


def _segment_raster(model: SegmentationModel, input_path: str | os.PathLike, outputs: SegmentOutputs,
                    options: SegmentOptions, feedback: Feedback) -> RasterSegmentation:
    start = time.perf_counter()
    _check_window(options, model.patch_size)
    class_names, background_index = options.vocabulary.background(options.background)
    if len(class_names) >= LABEL_NODATA:
        raise RasterInputError(f"{len(class_names)} classes do not fit a uint8 raster with nodata 255: use at most 254")
    colors = class_colors(class_names)
    options = replace(options, gba_lambda=model_gba_lambda(model, options))
    source = ProcessingSource(input_path, options.bands, options.extent, options.resolution, options.sensor,
                              options.polarisation)
    writers = []
    try:
        _log_start(model, source, options, class_names, background_index, feedback)
        writers.append(RasterWriter(outputs.classes, source.native, gdal.GDT_Byte, LABEL_NODATA, class_names, colors,
                                    "class"))
        if outputs.confidence:
            writers.append(RasterWriter(outputs.confidence, source.native, gdal.GDT_Float32, CONFIDENCE_NODATA,
                                        description="probability of the winning class"))
        stream = _Stream(model, source, options, background_index, len(class_names), writers, feedback)
        stream.run()
        for writer in writers:
            writer.close()
        areas = stream.areas(class_names)
        if not any(a["pixels"] for a in areas):
            raise RasterInputError(f"{input_path} has no valid pixels in the chosen extent and bands (all nodata or "
                                   "masked): choose another extent or check the layer's nodata value")
        result = RasterSegmentation(class_names, background_index, areas, len(stream.boxes), stream.skipped,
                                    0.0, (source.grid.width, source.grid.height),
                                    (source.native.width, source.native.height))
        if outputs.vector:
            from .gis.vectorize import polygonize

            feedback.info("polygonizing the classes")
            # its cancel only: the bar already stands at 100 % (the ConsoleFeedback ends a line at each 100 %)
            polygonize(writers[0].temp, outputs.vector, class_names=class_names, simplify=outputs.simplify,
                       min_area_m2=outputs.min_area_m2, feedback=CallbackFeedback(cancelled=feedback.cancelled))
            atomic_write(qml_path(outputs.vector), vector_qml(class_names, colors))
            result.outputs["vector"] = str(outputs.vector)
        for writer in writers:
            writer.commit()
        atomic_write(qml_path(outputs.classes), raster_qml(class_names, colors))
        result.outputs["classes"] = str(outputs.classes)
        if outputs.confidence:
            result.outputs["confidence"] = str(outputs.confidence)
        if outputs.areas_csv:
            atomic_write(outputs.areas_csv, areas_csv(areas))
            result.outputs["areas_csv"] = str(outputs.areas_csv)
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    finally:
        source.close()
    result.seconds = time.perf_counter() - start
    _log_end(result, feedback)
    return result


def _log_start(model: SegmentationModel, source: ProcessingSource, options: SegmentOptions, class_names: list[str],
               background_index: int, feedback: Feedback) -> None:
    runtime = getattr(model, "runtime", None)
    bundle = getattr(model, "bundle", None)
    feedback.info(f"model: {f'bundle {bundle}' if bundle else 'in-memory torch model'}; "
                  f"runtime: {runtime or 'torch, as loaded by the caller'}")
    px, py = source.pixel_metres
    native = source.native
    grid = source.grid
    feedback.info(f"input: {source.path}, bands {source.bands} ({source.data_type}; {source.stretch.describe()})")
    for note in source.notes:
        feedback.info(note)
    feedback.info(f"output grid: {native.width} x {native.height} px of {px:.3g} x {py:.3g} m (the input's pixels)")
    if source.resampling == "none":
        feedback.info("processing at the native resolution")
    else:
        feedback.info(f"processing grid: {grid.width} x {grid.height} px at {options.resolution:g} m "
                      f"({source.resampling} resampling by GDAL)")
    for warning in source.warnings:
        feedback.warn(warning)
    feedback.info(f"classes: {', '.join(class_names)}; pixels below probability {options.threshold:g} go to "
                  f"'{class_names[background_index]}'; global bias lambda {options.gba_lambda:g}")


def _log_end(result: RasterSegmentation, feedback: Feedback) -> None:
    width, height = result.processing_size
    feedback.info(f"{result.windows} windows ({result.skipped_windows} all-nodata windows skipped) over "
                  f"{width} x {height} px in {result.seconds:.1f} s")
    for area in result.areas:
        feedback.info(f"  {area['class_name']}: {area['pixels']} px, {area['area_m2']:.1f} m2, {area['percent']:.2f} %")


def areas_csv(areas: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, ["class_id", "class_name", "pixels", "area_m2", "percent"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(areas)
    return text.getvalue()


class _Stream:
    """One pass over the window rows: accumulate, finish rows, upsample, classify, write."""

    def __init__(self, model: SegmentationModel, source: ProcessingSource, options: SegmentOptions,
                 background_index: int, num_classes: int, writers: list[RasterWriter], feedback: Feedback) -> None:
        self.model = model
        self.source = source
        self.options = options
        self.background_index = background_index
        self.num_classes = num_classes
        self.writers = writers
        self.feedback = feedback
        grid = source.grid
        self.height, self.width = grid.height, grid.width
        self.boxes = window_boxes(self.height, self.width, options.window, options.stride)
        self.crop_shape = (min(options.window, self.height), min(options.window, self.width))
        self.text_features = model.text_features(options.vocabulary.queries)
        self.query_class = options.vocabulary.query_class
        self.queries = len(self.text_features)
        device = getattr(getattr(model, "runtime", None), "device", "cpu")
        self.batch_size = options.batch_size or (16 if device == "cuda" else 4)
        self.fill = np.round(np.asarray(model.image_mean) * 255).astype(np.uint8)
        native = source.native
        self.out_rows = bilinear_taps(native.height, self.height)
        self.out_cols = bilinear_taps(native.width, self.width)
        self.identity = (native.width, native.height) == (self.width, self.height)
        self.meter = AreaMeter(native.srs_wkt, native.geotransform, native.width, native.height)
        self.pixels = np.zeros(num_classes, np.int64)
        self.area = np.zeros(num_classes, np.float64)
        self.skipped = 0
        self.done = 0
        self.next_output = 0
        self.finished = None           # (queries + 1, rows, width): averaged logits and window coverage
        self.finished_top = 0
        self._strip = None             # the last strip read: (top, rgb, valid)

    def run(self) -> None:
        strips = {}
        for box in self.boxes:
            strips.setdefault((box[0], box[1]), []).append(box)
        strips = list(strips.items())
        strip_h = self.crop_shape[0]
        canvas = np.zeros((self.queries, strip_h, self.width), np.float32)
        count = np.zeros((strip_h, self.width), np.float32)
        for index, ((top, bottom), boxes) in enumerate(strips):
            self._check_cancel()
            rgb, valid = self._read(top, bottom)
            rgb[~valid] = self.fill
            image = normalize(rgb, self.model.image_mean, self.model.image_std)
            active = [b for b in boxes if valid[:, b[2]:b[3]].any()]
            self.skipped += len(boxes) - len(active)
            self.done += len(boxes) - len(active)
            batches = window_batches(self.model, active, lambda b, strip=image: strip[:, :, b[2]:b[3]],
                                     self.text_features, self.options.gba_lambda, self.crop_shape, self.batch_size)
            for batch in batches:
                for (y1, y2, x1, x2), logits in batch:
                    canvas[:, y1 - top:y2 - top, x1:x2] += logits
                    count[y1 - top:y2 - top, x1:x2] += 1
                self.done += len(batch)
                self.feedback.progress(self.done / len(self.boxes))
                self._check_cancel()
            next_top = strips[index + 1][0][0] if index + 1 < len(strips) else self.height
            rows = next_top - top
            self._finish(canvas[:, :rows], count[:rows], top)
            canvas = np.concatenate([canvas[:, rows:], np.zeros_like(canvas[:, :rows])], axis=1)
            count = np.concatenate([count[rows:], np.zeros_like(count[:rows])], axis=0)
        self.feedback.progress(1.0)

    def _check_cancel(self) -> None:
        if self.feedback.cancelled():
            raise Cancelled()

    def _read(self, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
        """Strips overlap by window - stride rows: only the new rows are read (and warped) again."""
        if self._strip is not None and self._strip[0] <= top < self._strip[0] + len(self._strip[1]):
            old_top, old_rgb, old_valid = self._strip
            keep = old_top + len(old_rgb) - top
            new_rgb, new_valid = self.source.read(top + keep, bottom) if top + keep < bottom else (
                old_rgb[:0], old_valid[:0])
            rgb = np.concatenate([old_rgb[top - old_top:], new_rgb])[:bottom - top]
            valid = np.concatenate([old_valid[top - old_top:], new_valid])[:bottom - top]
        else:
            rgb, valid = self.source.read(top, bottom)
        self._strip = (top, rgb.copy(), valid.copy())
        return rgb, valid

    def _finish(self, canvas: np.ndarray, count: np.ndarray, top: int) -> None:
        covered = count > 0
        averaged = np.divide(canvas, count, out=np.zeros_like(canvas), where=covered)
        rows = np.concatenate([averaged, covered[None].astype(np.float32)])
        if self.finished is None:
            self.finished, self.finished_top = rows, top
        else:
            self.finished = np.concatenate([self.finished, rows], axis=1)
        self._emit(final=top + canvas.shape[1] == self.height)

    def _emit(self, final: bool) -> None:
        first, second, _ = self.out_rows
        ready_until = self.finished_top + self.finished.shape[1]
        total = len(first)
        chunk = max(1, OUTPUT_CHUNK_VALUES // ((self.queries + 1) * len(self.out_cols[0])))
        while self.next_output < total:
            stop = self.next_output
            while stop < total and stop - self.next_output < chunk and (final or second[stop] < ready_until):
                stop += 1
            if stop == self.next_output:
                break
            self._write_rows(self.next_output, stop)
            self.next_output = stop
        if self.next_output < total:
            drop = first[self.next_output] - self.finished_top
            self.finished = self.finished[:, drop:]
            self.finished_top += drop

    def _write_rows(self, start: int, stop: int) -> None:
        first, second, weight = self.out_rows
        if self.identity:
            rows = self.finished[:, start - self.finished_top:stop - self.finished_top]
        else:
            offset = self.finished_top
            rows = interpolate_taps(self.finished, (first[start:stop] - offset, second[start:stop] - offset,
                                                    weight[start:stop]), self.out_cols)
        logits, coverage = rows[:-1], rows[-1]
        probabilities, labels = classify(logits, self.query_class, self.options.threshold, self.background_index)
        valid = self.source.native_valid(start, stop) & (coverage >= 1 - 1e-6)
        labels = labels.astype(np.uint8)
        labels[~valid] = LABEL_NODATA
        self.writers[0].write(start, labels)
        if len(self.writers) > 1:
            confidence = probabilities.max(axis=0)
            confidence[~valid] = CONFIDENCE_NODATA
            self.writers[1].write(start, confidence)
        row_index = np.broadcast_to(np.arange(stop - start)[:, None], labels.shape)[valid]
        counts = np.bincount(row_index * self.num_classes + labels[valid],
                             minlength=(stop - start) * self.num_classes).reshape(stop - start, self.num_classes)
        self.pixels += counts.sum(axis=0)
        self.area += self.meter.row_pixel_areas(start, stop) @ counts

    def areas(self, class_names: list[str]) -> list[dict]:
        total = float(self.area.sum()) or 1.0
        return [{"class_id": i, "class_name": name, "pixels": int(self.pixels[i]), "area_m2": float(self.area[i]),
                 "percent": 100.0 * float(self.area[i]) / total} for i, name in enumerate(class_names)]

