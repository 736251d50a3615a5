"""The command-line segment (core only, no qgis import) and the demo's inputs."""

import json
import subprocess
import sys

from osgeo import gdal
from rasters import scene_bands, write_geotiff

from segearth_qgis.core.style import class_colors

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


def test_demo_prepare_writes_a_georeferenced_scene_and_picks_the_smoke_bundle(tmp_path, monkeypatch):
    env = {"SEGEARTH_MODEL_DIR": str(tmp_path / "no-models"), "SEGEARTH_CACHE_DIR": str(tmp_path / "cache")}
    import os

    run = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "demo-prepare", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout.strip().splitlines()[-1])
    assert job["random_weights"] is True and "RANDOM" in run.stderr and "MEANINGLESS" in run.stderr
    assert (tmp_path / "cache" / "smoke-bundle-random-weights-v1" / "manifest.json").is_file()
    dataset = gdal.Open(job["input"])
    assert dataset.RasterXSize == 640 and dataset.GetSpatialRef().GetAuthorityCode(None) == "25832"


def test_background_classes_are_grey_and_the_rest_distinct():
    colors = class_colors(["background", "building", "road", "Clutter", "water"])
    assert colors[0] == colors[3] == (160, 160, 160)
    assert len({colors[1], colors[2], colors[4]}) == 3
