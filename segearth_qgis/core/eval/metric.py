"""Accuracy as the papers measure it (mmseg's IoUMetric): label encodings, the confusion matrix and the report."""

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common import signals
from ..common.files import atomic_write, temporary_sibling
from ..method.presets import Preset
from ..method.vocabulary import BACKGROUND_NAMES, UNCLASSIFIED, Vocabulary

IGNORED = -1                  # a decoded label that is not scored
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

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255, reduce_zero_label: bool = False,
                 label_map: str | None = None, aliases: Sequence[Sequence[str]] | None = None) -> None:
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

    def _target(self, text: str) -> int:
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

    def value(self, raw: str | float) -> int | None:
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

    def decode(self, raw: np.ndarray, valid: np.ndarray | None = None, where: str = "the labels") -> np.ndarray:
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

    def _store(self, table: np.ndarray, index: int, raw: str | float) -> int | None:
        target = self.value(raw)
        table[index] = IGNORED if target is None else target
        return target

    def unknown_message(self, values: list, where: str) -> str:
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

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes + 1), np.int64)
        self.ignored = 0

    def add(self, reference: np.ndarray, prediction: np.ndarray) -> None:
        """``reference``: decoded labels (IGNORED is not scored); ``prediction``: class indices of the same shape."""
        n = self.num_classes
        reference = np.asarray(reference).ravel()
        scored = reference != IGNORED
        self.ignored += int(reference.size - np.count_nonzero(scored))
        truth = reference[scored].astype(np.int64)
        predicted = np.asarray(prediction).ravel()[scored].astype(np.int64)
        predicted[(predicted < 0) | (predicted >= n)] = n
        self.counts += np.bincount(truth * (n + 1) + predicted, minlength=n * (n + 1)).reshape(n, n + 1)

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.counts += other.counts
        self.ignored += other.ignored
        return self

    def scores(self) -> dict:
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


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    value = float(value)
    return None if np.isnan(value) else value


@dataclass
class EvaluationReport:
    class_names: list
    confusion: ConfusionMatrix
    background_index: int | None = None       # a two-class set with a background reports the other class's IoU
    title: str = "SegEarth-OV evaluation"
    images: list = field(default_factory=list)    # per image: name, scored pixels, pixel accuracy, mIoU
    settings: dict = field(default_factory=dict)

    def add_image(self, name: str, confusion: ConfusionMatrix) -> None:
        self.confusion += confusion
        scores = confusion.scores()
        self.images.append({"image": name, "scored_pixels": int(scores["reference"].sum()),
                            "pixel_accuracy": _number(scores["pixel_accuracy"]), "miou": _number(scores["miou"])})

    @property
    def foreground_index(self) -> int | None:
        if len(self.class_names) == 2 and self.background_index in (0, 1):
            return 1 - self.background_index
        return None

    def as_dict(self) -> dict:
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

    def table(self) -> str:
        """The per-class table and the summary, as printed by the CLI and logged by the algorithm."""
        report = self.as_dict()
        width = max(len(name) for name in [*self.class_names, "class"])

        def percent(value: float | None) -> str:
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

    def csv_text(self) -> str:
        text = io.StringIO()
        columns = ["index", "name", "iou", "accuracy", "reference_pixels", "predicted_pixels", "intersection",
                   "union", "unpredicted_pixels"]
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        for entry in self.as_dict()["classes"]:
            writer.writerow({k: "" if v is None else v for k, v in entry.items()})
        return text.getvalue()

    def write(self, json_path: Path | str | None = None, csv_path: Path | str | None = None,
              png_path: Path | str | None = None, warn: Callable[[str], None] = print) -> dict[str, Path]:
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


def plot_confusion(path: Path | str, report: EvaluationReport) -> Path:
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
        with signals.in_flight(temp):
            figure.savefig(temp, format="png")
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def report_classes(preset: Preset | None = None, vocabulary: Vocabulary | None = None,
                   category_names: Sequence[str] | None = None,
                   background: str | None = None) -> tuple[list[str], list | None, int | None]:
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
