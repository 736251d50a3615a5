"""The command-line segment (core only, no qgis import)."""

import subprocess
import sys

from osgeo import gdal
from rasters import scene_bands, write_geotiff

NO_QGIS = """import sys
from segearth_qgis.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] == "qgis"], "the command-line segment imported qgis"
sys.exit(code)
"""


def test_segment_command_writes_classes_and_polygons_without_qgis(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(120, 180, seed=11))
    run = subprocess.run([sys.executable, "-c", NO_QGIS, "segment", source,
                          str(tmp_path / "classes.tif"), "--classes", "building,roof\\nroad\\nwater",
                          "--model", str(tiny_bundle), "--device", "cpu", "--vector", str(tmp_path / "p.gpkg"),
                          "--areas", str(tmp_path / "areas.csv")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CPUExecutionProvider" in run.stderr
    dataset = gdal.Open(str(tmp_path / "classes.tif"))
    band = dataset.GetRasterBand(1)
    band.GetDescription()
    assert band.GetCategoryNames() == ["building", "road", "water", "unclassified"]
    assert dataset.GetGeoTransform() == gdal.Open(source).GetGeoTransform()
    assert (tmp_path / "p.gpkg").is_file() and (tmp_path / "areas.csv").read_text().count("\n") == 5


def test_an_unforeseen_failure_is_one_line_and_debug_prints_the_traceback(tmp_path):
    """A failure nobody foresaw (here a KeyError from inside the command) is one line without a traceback; --debug,
    before or after the command's name, adds the traceback."""
    crash = ("import sys\nfrom segearth_qgis import cli\n"
             "def boom(args):\n    raise KeyError('boom')\n"
             "cli.export = boom\n"  # the parser binds the module's export when main builds it
             "sys.exit(cli.main(sys.argv[1:]))\n")
    arguments = ["export", "--clip", "c.pt", "--arch", "ViT-B-16", "--out", str(tmp_path / "b")]
    plain = subprocess.run([sys.executable, "-c", crash, *arguments], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1
    assert plain.stderr.strip() == ("export failed: unexpected KeyError: 'boom'; run again with --debug for the "
                                    "traceback: please report it")
    for debug in (["--debug", *arguments], [*arguments, "--debug"]):
        run = subprocess.run([sys.executable, "-c", crash, *debug], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
        assert "KeyError: 'boom'" in run.stderr


def test_a_missing_input_is_one_sentence_naming_it(tmp_path):
    missing = tmp_path / "nowhere.tif"
    run = subprocess.run([sys.executable, "-c", NO_QGIS, "segment", str(missing), str(tmp_path / "out.tif"),
                          "--classes", "road\\nwater"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("segment failed: ") and str(missing) in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out.tif").exists()
