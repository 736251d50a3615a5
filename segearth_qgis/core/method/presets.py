"""The official SegEarth-OV / SegEarth-OV-2 dataset settings, shipped as JSON so users can rerun a paper's setup."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..common.choices import ATTENTIONS, MODALITIES
from ..common.resources import resources_dir
from .vocabulary import Vocabulary

SCHEMA = 1
KEYS = {"schema", "name", "title", "source", "modality", "classes", "threshold", "background_index", "gba_lambda",
        "resize_longer_side", "window", "stride", "attention", "last_n", "label_encoding", "notes"}
LABEL_KEYS = {"reduce_zero_label", "ignore_index", "dataset_class_names"}


class PresetError(ValueError):
    """A preset file that is not valid JSON or breaks the schema; the message names the file and the problem."""


@dataclass(frozen=True)
class Preset:
    """One official configuration: what the model runs and how the dataset's labels are encoded."""

    name: str
    title: str
    source: str
    modality: str  # which default model runs it: "optical" or "sar"
    vocabulary: Vocabulary
    threshold: float  # pixels whose best class probability is below it go to background_index
    background_index: int
    gba_lambda: float  # weight of the subtracted [CLS] similarity
    resize_longer_side: int
    window: int | None  # window and stride both None: one whole-image pass
    stride: int | None
    attention: str
    last_n: int
    reduce_zero_label: bool
    ignore_index: int
    dataset_class_names: tuple[str, ...]
    notes: str


def presets_dir() -> Path:
    return resources_dir() / "presets"


def preset_names(folder: str | os.PathLike | None = None) -> list[str]:
    """The presets in ``folder`` (the shipped ones by default): file names without ``.json``, sorted."""
    return sorted(path.stem for path in Path(folder or presets_dir()).glob("*.json"))


def load_preset(name: str, folder: str | os.PathLike | None = None) -> Preset:
    """The preset called ``name`` (any case); ValueError listing the names when there is none."""
    folder = Path(folder or presets_dir())
    stems = {stem.lower(): stem for stem in preset_names(folder)}
    stem = stems.get(str(name).strip().lower())
    if stem is None:
        raise ValueError(f"no preset named {name!r}; available: {', '.join(stems.values())}")
    path = folder / f"{stem}.json"
    try:
        return _parse(json.loads(path.read_text(encoding="utf-8")), stem)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, PresetError) as error:
        raise PresetError(f"preset file {path}: {error}") from None


def _require(condition: object, problem: str) -> None:
    if not condition:
        raise PresetError(problem)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: object, minimum: float, maximum: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and minimum <= value <= maximum


def _check_keys(mapping: object, expected: set[str], where: str) -> None:
    _require(isinstance(mapping, dict), f"{where} must be a JSON object")
    missing, unknown = sorted(expected - mapping.keys()), sorted(mapping.keys() - expected)
    _require(not missing, f"{where} lacks {', '.join(missing)}")
    _require(not unknown, f"{where} has unknown keys {', '.join(unknown)}")


def _parse(data: object, stem: str) -> Preset:
    """The Preset in a decoded file; PresetError names the first problem found."""
    schema = data.get("schema") if isinstance(data, dict) else None
    _require(schema == SCHEMA, f"schema must be {SCHEMA}, got {schema!r}")
    _check_keys(data, KEYS, "the preset")
    labels = data["label_encoding"]
    _check_keys(labels, LABEL_KEYS, "label_encoding")

    _require(data["name"] == stem, f"name {data['name']!r} differs from the file name {stem!r}")
    for key in ("title", "source", "notes", "attention"):
        _require(isinstance(data[key], str), f"{key} must be text")
    _require(data["modality"] in MODALITIES, f"modality must be one of {', '.join(MODALITIES)}, "
                                             f"got {data['modality']!r}")
    _require(data["attention"] in ATTENTIONS, f"attention must be one of {', '.join(ATTENTIONS)}, "
                                              f"got {data['attention']!r}")

    classes = data["classes"]
    _require(isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes),
             "classes must be a non-empty list of text, one class per item")
    try:
        vocabulary = Vocabulary.from_classes(classes)
    except ValueError as error:
        raise PresetError(f"classes: {error}") from None
    _require(len(vocabulary) == len(classes), "every class needs a name and no line breaks")
    _require(_is_int(data["background_index"], 0) and data["background_index"] < len(classes),
             f"background_index {data['background_index']!r} is not a class index (0..{len(classes) - 1})")
    _require(_is_number(data["threshold"], 0, 1), f"threshold must be between 0 and 1, got {data['threshold']!r}")
    _require(_is_number(data["gba_lambda"], 0, float("inf")),
             f"gba_lambda is the subtracted weight, 0 or more (0.3 for cls_token_lambda=-0.3), "
             f"got {data['gba_lambda']!r}")
    _require(_is_int(data["resize_longer_side"], 1), "resize_longer_side must be a positive whole number")
    _require(_is_int(data["last_n"], 1), "last_n must be a positive whole number")

    window, stride = data["window"], data["stride"]
    if window is None or stride is None:
        _require(window is None and stride is None, "window and stride are both null (whole image) or both set")
    else:
        _require(_is_int(window, 1) and _is_int(stride, 1) and stride <= window,
                 f"window and stride must be positive whole numbers, stride <= window, got {window!r}/{stride!r}")

    names = labels["dataset_class_names"]
    _require(isinstance(names, list) and all(isinstance(n, str) for n in names),
             "label_encoding.dataset_class_names must be a list of text")
    _require(len(names) == len(classes), f"label_encoding.dataset_class_names has {len(names)} names "
                                         f"for {len(classes)} classes")
    _require(isinstance(labels["reduce_zero_label"], bool), "label_encoding.reduce_zero_label must be true or false")
    _require(_is_int(labels["ignore_index"], 0), "label_encoding.ignore_index must be a whole number, 0 or more")

    return Preset(name=stem, title=data["title"], source=data["source"], modality=data["modality"],
                  vocabulary=vocabulary, threshold=float(data["threshold"]), background_index=data["background_index"],
                  gba_lambda=float(data["gba_lambda"]), resize_longer_side=data["resize_longer_side"], window=window,
                  stride=stride, attention=data["attention"], last_n=data["last_n"],
                  reduce_zero_label=labels["reduce_zero_label"], ignore_index=labels["ignore_index"],
                  dataset_class_names=tuple(names), notes=data["notes"])
