"""The shipped official presets: all there, all valid, values as in the official configs; broken files are named."""

import json
import subprocess
import sys

import pytest

from segearth_qgis.core.method.presets import PresetError, load_preset, preset_names, presets_dir

OPTICAL = {"openearthmap", "loveda", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "vdd", "whu_aerial",
           "whu_sat_ii", "inria", "xbd", "chn6-cug", "deepglobe_road", "massachusetts_road", "spacenet_road", "wbs-si"}
ALIGNEARTH_SAR = {"openearthmap_sar", "fusar_sar", "ddhrnet_korea_sar", "ddhrnet_shandong_sar", "ddhrnet_xian_sar",
                  "pie_sar", "whu_sar", "yeseg_sar"}
SAR_CONFIGS = ALIGNEARTH_SAR | {"hrsid"}  # hrsid is a SegEarth-OV-2 SAR config that runs the optical model


def test_all_official_configs_are_shipped():
    assert len(OPTICAL) == 17 and len(SAR_CONFIGS) == 9
    assert preset_names() == sorted(OPTICAL | SAR_CONFIGS)


@pytest.mark.parametrize("name", sorted(OPTICAL | SAR_CONFIGS))
def test_every_preset_loads_with_its_model_settings(name):
    preset = load_preset(name)
    assert preset.name == name
    assert len(preset.dataset_class_names) == len(preset.vocabulary)
    assert preset.ignore_index == 255
    if name in ALIGNEARTH_SAR:
        assert (preset.modality, preset.attention, preset.last_n) == ("sar", "SCLIP", 2)
        assert preset.source.startswith("earth-insights/SegEarth-OV-2 configs/cfg_")
    else:
        assert (preset.modality, preset.attention, preset.last_n) == ("optical", "SegEarth", 1)
    if name in OPTICAL:
        assert (preset.resize_longer_side, preset.window, preset.stride) == (448, 224, 112)
        assert preset.source.startswith("likyoo/SegEarth-OV configs/cfg_")
    assert preset.gba_lambda == (0.0 if name == "xbd" else 0.3)


def test_openearthmap():
    preset = load_preset("openearthmap")
    assert len(preset.vocabulary) == 9
    assert (preset.threshold, preset.background_index, preset.reduce_zero_label) == (0.1, 0, False)
    assert preset.vocabulary.classes[-1] == ("building", "roof", "house")
    assert preset.dataset_class_names == ("background", "bareland", "grass", "pavement", "road", "tree", "water",
                                          "cropland", "building")


def test_potsdam_uses_the_ov1_vocabulary_with_clutter_as_background():
    preset = load_preset("potsdam")
    assert preset.background_index == 5 and preset.threshold == 0.1
    assert preset.vocabulary.classes[5] == ("clutter", "background")
    assert preset.vocabulary.classes[0] == ("road", "parking lot")
    assert "OV-2" in preset.notes and "grass" in preset.notes


def test_single_value_spot_checks():
    assert load_preset("xbd").gba_lambda == 0.0 and load_preset("xbd").threshold == 0.0
    assert load_preset("loveda").reduce_zero_label is True
    assert load_preset("udd5").background_index == 4
    assert load_preset("chn6-cug").threshold == 0.8
    assert load_preset("vdd").dataset_class_names[:2] == ("other", "wall")
    assert load_preset("yeseg_sar").threshold == 0.3
    assert load_preset("fusar_sar").dataset_class_names[-1] == "vegetation"


def test_whu_sar():
    preset = load_preset("whu_sar")
    assert preset.background_index == 6 and preset.vocabulary.class_names[6] == "others"
    assert preset.reduce_zero_label is True
    assert (preset.resize_longer_side, preset.window, preset.stride) == (224, None, None)


def test_sar_resizes_and_windows():
    for name in ("openearthmap_sar", "fusar_sar"):
        assert (load_preset(name).resize_longer_side, load_preset(name).window) == (448, 224)
    for name in ALIGNEARTH_SAR - {"openearthmap_sar", "fusar_sar"}:
        assert (load_preset(name).resize_longer_side, load_preset(name).window) == (224, None)


def test_hrsid_runs_the_optical_model_on_the_whole_image():
    preset = load_preset("hrsid")
    assert (preset.modality, preset.threshold, preset.resize_longer_side) == ("optical", 0.6, 448)
    assert (preset.window, preset.stride) == (None, None)
    assert preset.vocabulary.classes == (("background",), ("ship", "boat"))


def test_names_are_case_insensitive():
    assert load_preset("Potsdam") == load_preset("potsdam")
    assert load_preset(" WHU_SAR ").name == "whu_sar"


def test_unknown_name_lists_the_presets():
    with pytest.raises(ValueError, match="available: .*potsdam.*whu_sar") as error:
        load_preset("no-such-dataset")
    assert not isinstance(error.value, PresetError)


def test_attention_names_match_the_torch_model():
    from segearth_qgis.core.method.presets import ATTENTIONS
    from segearth_qgis.core.method.torch_model import ATTENTIONS as MODEL_ATTENTIONS

    assert ATTENTIONS == MODEL_ATTENTIONS


def test_loading_needs_neither_qgis_nor_torch():
    script = ("import sys; from segearth_qgis.core.method.presets import load_preset; load_preset('potsdam'); "
              "assert not {m.split('.')[0] for m in sys.modules} & {'qgis', 'torch'}")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


MISSING = object()


def _broken(data, key, value):
    """``data`` with ``key`` (``label_encoding.x`` for a nested one) set to ``value``, or removed for MISSING."""
    target = data["label_encoding"] if key.startswith("label_encoding.") else data
    key = key.removeprefix("label_encoding.")
    if value is MISSING:
        del target[key]
    else:
        target[key] = value
    return data


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("schema", 2, "schema must be 1"),
    ("title", MISSING, "lacks title"),
    ("background_index", 6, "background_index 6 is not a class index"),
    ("stride", None, "both null"),
    ("modality", "radar", "modality must be one of optical, sar"),
    ("label_encoding.dataset_class_names", ["road"], "1 names for 6 classes"),
    ("classes", ["road", ""], "every class needs a name"),
    ("threshold", 1.5, "threshold must be between 0 and 1"),
    ("gba_lambda", -0.3, "gba_lambda is the subtracted weight"),
    ("attention", "NACLIP", "attention must be one of"),
    ("extra", 1, "unknown keys extra"),
])
def test_malformed_preset_names_the_file_and_the_problem(tmp_path, key, value, problem):
    data = json.loads((presets_dir() / "potsdam.json").read_text(encoding="utf-8"))
    data["name"] = "broken"
    (tmp_path / "broken.json").write_text(json.dumps(_broken(data, key, value)), encoding="utf-8")
    with pytest.raises(PresetError, match=problem) as error:
        load_preset("broken", folder=tmp_path)
    assert "broken.json" in str(error.value)


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    assert preset_names(tmp_path) == ["bad"]
    with pytest.raises(PresetError, match="bad.json"):
        load_preset("bad", folder=tmp_path)
