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
