"""The output-path guard and the shared parameter checks, on real files: no output onto an input or another output."""

import math
import os

import pytest

from segearth_qgis.core.common.checks import ParameterError, band_numbers, finite_number
from segearth_qgis.core.common.outputs import OutputPathError, check_output_paths


@pytest.fixture()
def raster(tmp_path):
    path = tmp_path / "scene.tif"
    path.write_bytes(b"II*\0 not really a tiff, the guard never reads it")
    return path


def test_an_output_onto_the_input_is_refused_through_a_symlink_and_a_sidecar(raster, tmp_path):
    link = tmp_path / "link.tif"
    link.symlink_to(raster)
    before = raster.read_bytes()
    for output in (raster, link, tmp_path / "sub" / ".." / "scene.tif", f"{raster}.aux.xml"):
        with pytest.raises(OutputPathError, match=r"OUTPUT \(.*\) would overwrite the input INPUT \(.*scene.tif\)"):
            check_output_paths({"INPUT": [raster]}, {"OUTPUT": output})
    assert raster.read_bytes() == before


def test_a_hard_link_and_a_vrt_source_count_as_the_input(raster, tmp_path):
    hard = tmp_path / "hard.tif"
    os.link(raster, hard)
    with pytest.raises(OutputPathError, match="would overwrite the input INPUT"):
        check_output_paths({"INPUT": [tmp_path / "mosaic.vrt", raster]}, {"OUTPUT": hard})


def test_two_outputs_onto_one_file_are_refused_and_distinct_ones_pass(raster, tmp_path):
    classes = tmp_path / "classes.tif"
    with pytest.raises(OutputPathError, match=r"OUTPUT_CONFIDENCE .* would overwrite the output OUTPUT"):
        check_output_paths({"INPUT": [raster]}, {"OUTPUT": classes, "OUTPUT_CONFIDENCE": classes})
    with pytest.raises(OutputPathError, match="would overwrite the output OUTPUT"):
        check_output_paths({}, {"OUTPUT": classes, "OUTPUT_AREAS": f"{classes}.aux.xml"})
    with pytest.raises(OutputPathError, match="would overwrite the output OUTPUT"):
        check_output_paths({}, {"OUTPUT": tmp_path / "p.shp", "OUTPUT_AREAS": tmp_path / "p.dbf"})
    check_output_paths({"INPUT": [raster]}, {"OUTPUT": classes, "OUTPUT_CONFIDENCE": tmp_path / "confidence.tif",
                                             "OUTPUT_VECTOR": None, "OUTPUT_AREAS": "TEMPORARY_OUTPUT"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]  # the write test leaves nothing


def test_an_output_in_a_folder_that_is_a_file_or_read_only_is_named(raster, tmp_path):
    with pytest.raises(OutputPathError, match=r"OUTPUT \(.*scene.tif/out.tif\): .* is a file, not a folder"):
        check_output_paths({}, {"OUTPUT": raster / "out.tif"})
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder: the refusal is checked as a normal user")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match=r"OUTPUT \(.*locked/out.tif\) cannot be written: the folder"):
            check_output_paths({}, {"OUTPUT": locked / "out.tif"})
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "1e999"])
def test_non_finite_numbers_are_refused_by_name(value):
    with pytest.raises(ParameterError, match=r"^GBA_LAMBDA is .*: give a finite number$"):
        finite_number("GBA_LAMBDA", value, 0.0)


def test_numbers_outside_their_range_and_text_are_refused():
    assert finite_number("THRESHOLD", "0.25", 0.0, 1.0) == 0.25 and finite_number("THRESHOLD", None) is None
    with pytest.raises(ParameterError, match="THRESHOLD is 2: give a number between 0 and 1"):
        finite_number("THRESHOLD", 2, 0.0, 1.0)
    with pytest.raises(ParameterError, match="not a number"):
        finite_number("SIMPLIFY", "much")


def test_bands_arrive_as_qgis_process_gives_them():
    assert band_numbers("BANDS", "3,2,1") == [3, 2, 1]
    assert band_numbers("BANDS", ["3", "2", "1"]) == [3, 2, 1]
    assert band_numbers("BANDS", "4; 3 ;2") == [4, 3, 2]
    assert band_numbers("BANDS", [3, 2, 1]) == [3, 2, 1]
    assert band_numbers("BANDS", ["3,2,1"]) == [3, 2, 1]
    assert band_numbers("BANDS", "") is None and band_numbers("BANDS", None) is None
    with pytest.raises(ParameterError, match="bands are numbered from 1"):
        band_numbers("BANDS", "0,1,2")
    with pytest.raises(ParameterError, match=r"'red', not a band number: .*BANDS=3,2,1"):
        band_numbers("BANDS", "red,green,blue")
