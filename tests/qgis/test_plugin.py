"""The plugin inside real QGIS: the provider registers from the checkout and from the staged folder via qgis_process."""

import os
import subprocess
import sys

from qgis.core import QgsApplication

from segearth_qgis import classFactory
from tools.build.environment import ROOT
from tools.build.plugin import stage_plugin


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
    staged = stage_plugin(tmp_path / "plugins")
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
    probe = subprocess.run([sys.executable, "-c", "from segearth_qgis.core.common.resources import resource_path; "
                            "print(resource_path('icon.svg'))"], env=dict(env, PYTHONPATH=str(staged.parent)),
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(staged / "resources" / "icon.svg"), probe.stderr


def test_segment_dialog_opens_and_round_trips_its_parameters(tiny_bundle, tmp_path, artefacts):
    import json

    from rasters import scene_bands, write_geotiff

    raster = write_geotiff(tmp_path / "scene.tif", scene_bands(64, 64))
    screenshot = artefacts / "segment_dialog.png"
    probe = subprocess.run([sys.executable, str(ROOT / "tests" / "dialog_probe.py"), raster, str(tiny_bundle),
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
