"""The desktop's map action in a real QGIS window under Xvfb: the dialog on the active layer, the canvas extent and
the last classes, styled outputs, and a plugin reload that registers nothing twice."""

import math
import os
import subprocess

import pytest

from tools.build.environment import ROOT
from tools.build.plugin import stage_plugin


def test_map_action_maps_the_visible_extent_in_the_desktop(tiny_bundle, tmp_path, artefacts):
    """QGIS desktop under Xvfb: the Raster-menu action opens segearth:segment on the active layer, the canvas extent
    and the last classes; the run loads styled outputs; reloading the plugin registers nothing twice."""
    import json
    import shutil

    from osgeo import gdal
    from rasters import scene_bands, write_geotiff

    raster = write_geotiff(tmp_path / "scene.tif", scene_bands(200, 260, seed=4))
    out = tmp_path / "probe"
    out.mkdir()
    staged = stage_plugin(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PROBE_OUT=str(out), PROBE_RASTER=str(raster), PROBE_BUNDLE=str(tiny_bundle),
               PROBE_LAST_CLASSES="building,roof\nroad", PROBE_CLASSES="building,roof\nroad\nwater\ntree")
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    env.pop("QT_QPA_PLATFORM", None)  # the desktop draws on Xvfb
    desktop = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "qgis", "--noversioncheck", "--nologo",
                              "--code", str(ROOT / "tests" / "map_action_probe.py")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert (out / "report.json").exists(), desktop.stdout[-3000:] + desktop.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert "error" not in report, report["error"]
    assert report["actions_at_start"] == report["actions_after_reload"] == 1
    assert report["menu_after_reload"] == [["Map classes with SegEarth-OV…"]]
    assert report["providers_after_reload"] == 1
    initial = report["dialog_initial"]
    assert initial["INPUT"] in (report["layer_id"], report["layer_source"])
    assert initial["CLASSES"] == "building,roof\nroad"
    numbers, crs = initial["EXTENT"].split(" ")
    assert crs == f"[{report['crs']}]" == "[EPSG:25832]"
    # the dialog's extent widget keeps 4 decimals of metres from QGIS 3.40 on (3.22 kept them all)
    assert [float(v) for v in numbers.split(",")] == pytest.approx(report["canvas_extent"], abs=1e-4)
    assert report["run"]["ok"] is True
    labels = ["building", "road", "water", "tree", "unclassified"]
    assert report["loaded"][str(out / "classes.tif")] == {"renderer": "paletted", "labels": labels}
    vector = report["loaded"][str(out / "classes.gpkg")]
    assert vector["renderer"] == "categorizedSymbol" and set(vector["labels"]) <= set(labels)
    assert report["last_classes"] == report["dialog_again_classes"] == "building,roof\nroad\nwater\ntree"
    assert report["active_after_run"] != report["layer_id"]  # the result is active; the scene is offered again
    assert report["dialog_again_input"] in (report["layer_id"], report["layer_source"])
    source, result = gdal.Open(str(raster)), gdal.Open(str(out / "classes.tif"))
    x0, dx, _, y0, _, dy = source.GetGeoTransform()
    rx0, rdx, _, ry0, _, rdy = result.GetGeoTransform()
    xmin, xmax, ymin, ymax = report["canvas_extent"]
    col0 = math.floor((max(xmin, x0) - x0) / dx)
    col1 = math.ceil((min(xmax, x0 + dx * source.RasterXSize) - x0) / dx)
    row0 = math.floor((min(ymax, y0) - y0) / dy)
    row1 = math.ceil((max(ymin, y0 + dy * source.RasterYSize) - y0) / dy)
    assert (rx0, rdx, ry0, rdy) == (x0 + col0 * dx, dx, y0 + row0 * dy, dy)
    assert (result.RasterXSize, result.RasterYSize) == (col1 - col0, row1 - row0)
    assert (col1 - col0) * (row1 - row0) < source.RasterXSize * source.RasterYSize
    for name in ("map.png", "screen.png"):
        assert (out / name).stat().st_size > 10_000
        shutil.copy2(out / name, artefacts / f"map_action_{name}")
