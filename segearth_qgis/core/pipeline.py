"""The streaming GIS pipeline: any GDAL raster to a classified GeoTIFF, confidence, polygons and areas, in strips.

The sliding window runs over the whole processing grid exactly as ``segment_image`` runs over an array (same boxes,
same order, same padding), but one row of windows at a time: the logits of finished rows are averaged, upsampled to
the output grid with the same bilinear taps, classified and written, then dropped. Memory depends on the raster's
width, never on its height; there are no seams because no window is cut at a block border.
"""

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
from osgeo import gdal

from .common.checks import MAX_WINDOWS, band_numbers, finite_number
from .common.feedback import CallbackFeedback, Cancelled, Feedback, as_feedback
from .common.files import atomic_write
from .common.outputs import check_output_paths
from .gis.geo import AreaMeter
from .gis.raster import (
    CONFIDENCE_NODATA,
    LABEL_NODATA,
    Grid,
    RasterInputError,
    RasterWriter,
    bounded_block_cache,
    dataset_files,
    no_bands_problem,
    open_raster,
    raster_file_problem,
)
from .gis.source import BAND_READERS, ProcessingSource, processing_grids
from .gis.style import class_colors, qml_path, raster_qml, vector_qml
from .method.model import SegmentationModel
from .method.resize import bilinear_taps, interpolate_taps
from .method.segment import classify
from .method.vocabulary import Vocabulary
from .method.windows import normalize, window_batches, window_boxes

OUTPUT_CHUNK_VALUES = 8 << 20   # floats per output chunk (queries x rows x width): about 32 MB
MEMORY_SHARE = 0.7              # of the memory available now: a run estimated above it is refused
MIN_GRID_SIDE = 16              # one patch of the model: a coarser processing grid holds no usable pixel


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
    allow_large: bool = False           # run even when the estimate is over MAX_WINDOWS (never over the memory)


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

    threshold = finite_number("THRESHOLD", threshold, 0.0, 1.0)
    gba_lambda = finite_number("GBA_LAMBDA", gba_lambda, 0.0)
    grid["resolution"] = finite_number("RESOLUTION", grid.get("resolution") or 0.0, 0.0)
    if grid.get("extent") is not None:
        grid["extent"] = tuple(finite_number("EXTENT", value) for value in grid["extent"])
    if grid.get("bands") is not None:
        grid["bands"] = band_numbers("BANDS", grid["bands"])
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


@dataclass(frozen=True)
class RunEstimate:
    """What a run will take, known before it starts: the processing grid, its windows and the peak memory."""

    width: int
    height: int
    windows: int
    memory_bytes: int

    def describe(self) -> str:
        return (f"a {self.width:,} x {self.height:,} px processing grid, {self.windows:,} "
                f"window{'' if self.windows == 1 else 's'}, about "
                f"{self.memory_bytes / 2 ** 30:.1f} GiB of memory")


def estimate_run(width: int, height: int, queries: int, options: SegmentOptions) -> RunEstimate:
    """The windows of a ``width`` x ``height`` processing grid and the stream's peak memory (its strips of logits,
    their copies, the output chunks, a batch of windows' logits and the list of boxes)."""
    window = options.window
    rows = max(height - window + options.stride - 1, 0) // options.stride + 1
    cols = max(width - window + options.stride - 1, 0) // options.stride + 1
    strip = (queries + 1) * min(window, height) * width
    batch = (options.batch_size or 16) * queries * min(window, height) * min(window, width)  # windows are cropped
    floats = 7 * strip + 3 * OUTPUT_CHUNK_VALUES + 4 * batch
    return RunEstimate(width, height, rows * cols, 4 * floats + 120 * rows * cols)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux: MemAvailable), else the physical memory, or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_request(input_path: str | os.PathLike, outputs: SegmentOutputs, options: SegmentOptions) -> RunEstimate:
    """Everything that can be known to fail before the first window, refused with a sentence that says what to do:
    outputs onto inputs or onto each other, output formats, numbers, the class count, the input file itself, a grid
    too coarse for the model, and a run too large (windows over ``MAX_WINDOWS`` unless ``options.allow_large``,
    memory over ``MEMORY_SHARE`` of what is available). Returns the run's estimate."""
    from .gis.vectorize import output_driver

    class_names, _ = options.vocabulary.background(options.background)
    if len(class_names) > LABEL_NODATA:
        typed = len(options.vocabulary)
        extra = "" if typed == len(class_names) else f" ({typed} typed and '{class_names[-1]}' for the pixels below " \
                                                     "the threshold: name one of yours as BACKGROUND)"
        raise RasterInputError(f"{len(class_names)} classes{extra} do not fit a uint8 raster whose value 255 is "
                               f"nodata: map at most {LABEL_NODATA} classes")
    local = raster_file_problem(input_path)
    if local:
        raise RasterInputError(local)
    check_output_paths({"INPUT": dataset_files(input_path)},
                       {"OUTPUT": outputs.classes, "OUTPUT_CONFIDENCE": outputs.confidence,
                        "OUTPUT_VECTOR": outputs.vector, "OUTPUT_AREAS": outputs.areas_csv})
    for name, path in (("OUTPUT", outputs.classes), ("OUTPUT_CONFIDENCE", outputs.confidence)):
        if path and os.path.splitext(str(path))[1].lower() not in (".tif", ".tiff"):
            raise RasterInputError(f"{name} ({path}): raster outputs are GeoTIFF: name it with .tif")
    if outputs.vector:
        output_driver(outputs.vector)
        # refused where the .qml is a layer's only style (.shp, .geojson, .fgb); classes.tif beside classes.gpkg
        # stays allowed, the raster's .qml taking the name as before
        if qml_path(outputs.vector) == qml_path(outputs.classes) and output_driver(outputs.vector) != "GPKG":
            raise RasterInputError(f"OUTPUT_VECTOR ({outputs.vector}) and OUTPUT ({outputs.classes}) would share the "
                                   f"style file {qml_path(outputs.classes).name}, which QGIS loads for both: give "
                                   "them different names")
    min_area = finite_number("MIN_AREA", outputs.min_area_m2, 0.0)
    _check_window(options, MIN_GRID_SIDE)
    simplify = finite_number("SIMPLIFY", outputs.simplify, 0.0)
    native, grid, pixel_metres = _grids(input_path, options)
    extent = native.extent
    diagonal = math.hypot(extent[2] - extent[0], extent[3] - extent[1])
    area_m2 = native.width * native.height * pixel_metres[0] * pixel_metres[1]
    if min_area and min_area > area_m2:
        raise RasterInputError(f"MIN_AREA {min_area:g} m2 is larger than the whole raster (about {area_m2:.6g} m2): "
                               "every region would merge into one; give a smaller area")
    if simplify and simplify > diagonal:
        raise RasterInputError(f"SIMPLIFY {simplify:g} is larger than the whole raster ({diagonal:.6g} layer "
                               "units corner to corner): every polygon would vanish; use a tolerance of about a "
                               f"pixel ({abs(native.geotransform[1]):.3g})")
    if options.resolution and min(grid.width, grid.height) < MIN_GRID_SIDE:
        finest = min(native.width * pixel_metres[0], native.height * pixel_metres[1]) / MIN_GRID_SIDE
        raise RasterInputError(f"at RESOLUTION {options.resolution:g} m the raster becomes a {grid.width} x "
                               f"{grid.height} px grid, smaller than one {MIN_GRID_SIDE}-px patch of the model: "
                               f"use a RESOLUTION of at most {finest:.3g} m, or 0 for the native "
                               f"{pixel_metres[0]:.3g} m pixels")
    estimate = estimate_run(grid.width, grid.height, len(options.vocabulary.queries), options)
    _check_size(estimate, options, native, pixel_metres)
    return estimate


def _grids(input_path: str | os.PathLike, options: SegmentOptions) -> tuple[Grid, Grid, tuple[float, float]]:
    """(output grid, processing grid, pixel size in metres), the bands checked; the dataset is closed on return."""
    dataset = open_raster(input_path)
    try:
        if dataset.RasterCount == 0:
            raise RasterInputError(no_bands_problem(dataset, input_path))
        BAND_READERS[options.sensor](dataset, options.bands, options.polarisation)
        _, native, grid, pixel_metres = processing_grids(dataset, options.extent, options.resolution)
    finally:
        dataset = None
    return native, grid, pixel_metres


def _check_size(estimate: RunEstimate, options: SegmentOptions, native: Grid, pixel_metres: tuple) -> None:
    available = available_memory()
    budget = None if available is None else MEMORY_SHARE * available
    too_many = estimate.windows > MAX_WINDOWS and not options.allow_large
    too_big = budget is not None and estimate.memory_bytes > budget
    if not (too_many or too_big):
        return
    queries = len(options.vocabulary.queries)
    extent_m = (native.width * pixel_metres[0], native.height * pixel_metres[1])

    def fits(resolution: float) -> bool:
        run = estimate_run(max(1, round(extent_m[0] / resolution)), max(1, round(extent_m[1] / resolution)), queries,
                           options)
        return (run.windows <= MAX_WINDOWS or options.allow_large) and (budget is None or run.memory_bytes <= budget)

    low, high = 1e-6, max(extent_m)
    for _ in range(60):  # geometric bisection for the finest resolution that fits
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    step = 10 ** (math.floor(math.log10(high)) - 2)
    finest = float(f"{math.ceil(high / step) * step:.3g}")  # three digits, rounded up so that it fits
    if too_big:
        raise RasterInputError(f"this run needs {estimate.describe()}, more than the "
                               f"{budget / 2 ** 30:.1f} GiB that can be used now: choose a RESOLUTION of at least "
                               f"{finest:g} m, or a smaller extent")
    raise RasterInputError(f"this run is very large: {estimate.describe()} (over {MAX_WINDOWS:,} windows, hours of "
                           f"work): choose a RESOLUTION of at least {finest:g} m or a smaller extent, or confirm "
                           "with ALLOW_LARGE (--allow-large)")


def segment_raster(model: SegmentationModel, input_path: str | os.PathLike, outputs: SegmentOutputs,
                   options: SegmentOptions, feedback: Feedback | None = None) -> RasterSegmentation:
    """Segment ``input_path`` into ``outputs``; returns a ``RasterSegmentation``. Nothing is left behind on failure."""
    with bounded_block_cache():
        return _segment_raster(model, input_path, outputs, options, as_feedback(feedback))


def _segment_raster(model: SegmentationModel, input_path: str | os.PathLike, outputs: SegmentOutputs,
                    options: SegmentOptions, feedback: Feedback) -> RasterSegmentation:
    start = time.perf_counter()
    _check_window(options, model.patch_size)
    estimate = check_request(input_path, outputs, options)
    class_names, background_index = options.vocabulary.background(options.background)
    colors = class_colors(class_names)
    options = replace(options, gba_lambda=model_gba_lambda(model, options))
    source = ProcessingSource(input_path, options.bands, options.extent, options.resolution, options.sensor,
                              options.polarisation)
    writers = []
    try:
        _log_start(model, source, options, class_names, background_index, feedback)
        feedback.info(f"estimate: {estimate.describe()}")
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

