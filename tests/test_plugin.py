"""The plugin inside real QGIS: the provider registers from the checkout and from the staged folder via qgis_process."""

import math
import os
import subprocess
import sys

import pytest
from qgis.core import QgsApplication

import build
from segearth_qgis import classFactory


def test_provider_registers_once_and_unloads(qgis_app, qgis_iface):
    registry = QgsApplication.processingRegistry()
    registry.removeProvider("segearth")  # registered by the algorithm tests' fixture, which re-adds it when needed
    plugin = classFactory(qgis_iface)
    plugin.initProcessing()
    plugin.initGui()
    provider = registry.providerById("segearth")
    assert provider is not None and provider.name() == "SegEarth-OV"
    assert sum(p.id() == "segearth" for p in registry.providers()) == 1
    assert not provider.icon().isNull()
    plugin.unload()
    assert registry.providerById("segearth") is None


def test_staged_plugin_loads_in_qgis_process(tmp_path):
    staged = build.stage_plugin(tmp_path / "plugins")
    assert (staged / "metadata.txt").is_file() and (staged / "resources" / "icon.svg").is_file()
    assert not list(staged.rglob("__pycache__"))
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               QT_QPA_PLATFORM="offscreen")
    enable = subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    listed = subprocess.run(["qgis_process.bin", "plugins"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0
    assert any(line.strip() == "* segearth_qgis" for line in listed.stdout.splitlines()), listed.stdout
    probe = subprocess.run([sys.executable, "-c", "from segearth_qgis.core.resources import resource_path; "
                            "print(resource_path('icon.svg'))"], env=dict(env, PYTHONPATH=str(staged.parent)),
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(staged / "resources" / "icon.svg"), probe.stderr


def test_segment_dialog_opens_and_round_trips_its_parameters(tiny_bundle, tmp_path, artefacts):
    import json

    from rasters import scene_bands, write_geotiff

    raster = write_geotiff(tmp_path / "scene.tif", scene_bands(64, 64))
    screenshot = artefacts / "segment_dialog.png"
    probe = subprocess.run([sys.executable, str(build.ROOT / "tests" / "dialog_probe.py"), raster, str(tiny_bundle),
                            str(screenshot)], env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    back = json.loads(probe.stdout.strip().splitlines()[-1])
    assert back["CLASSES"] == "building,roof\nroad\nwater,river"
    assert back["PRESET"] == "potsdam" and back["DEVICE"] == "cpu" and back["BACKEND"] == "onnx"
    assert [int(b) for b in back["BANDS"]] == [3, 2, 1]
    assert float(back["RESOLUTION"]) == 0.8 and float(back["THRESHOLD"]) == 0.25
    assert back["BACKGROUND"] == "road" and back["MODEL"] == str(tiny_bundle)
    assert screenshot.stat().st_size > 10_000


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
    staged = build.stage_plugin(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PROBE_OUT=str(out), PROBE_RASTER=str(raster), PROBE_BUNDLE=str(tiny_bundle),
               PROBE_LAST_CLASSES="building,roof\nroad", PROBE_CLASSES="building,roof\nroad\nwater\ntree")
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    env.pop("QT_QPA_PLATFORM", None)  # the desktop draws on Xvfb
    desktop = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "qgis", "--noversioncheck", "--nologo",
                              "--code", str(build.ROOT / "tests" / "map_action_probe.py")],
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


def test_package_zip_installs_into_a_fresh_profile_and_the_provider_loads(tmp_path):
    import zipfile

    package = build.package(tmp_path / "dist")
    assert package.stat().st_size < build.PACKAGE_LIMIT_BYTES
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
        assert "segearth_qgis/metadata.txt" in names and "segearth_qgis/resources/presets/potsdam.json" in names
        assert not [n for n in names if n.endswith((".pyc", ".so", ".onnx"))]
        archive.extractall(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(tmp_path / "plugins"), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "p"),
               QT_QPA_PLATFORM="offscreen")
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    listed = subprocess.run(["qgis_process.bin", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "segearth:segment" in listed.stdout and "segearth:vectorize" in listed.stdout, listed.stdout[-2000:]


def test_qgis_env_can_be_prepared_twice(tmp_path):
    """The demo and `build.py qgis` reuse out/qgis: enabling an already-enabled plugin is not an error."""
    from pathlib import Path

    first = build.qgis_env(Path(sys.prefix), tmp_path)
    second = build.qgis_env(Path(sys.prefix), tmp_path)
    assert first["QGIS_CUSTOM_CONFIG_PATH"] == second["QGIS_CUSTOM_CONFIG_PATH"] == str(tmp_path / "profile")
    assert (tmp_path / "plugins" / "segearth_qgis" / "metadata.txt").is_file()
