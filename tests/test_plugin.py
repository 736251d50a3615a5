"""The plugin inside real QGIS: the provider registers from the checkout and from the staged folder via qgis_process."""

import os
import subprocess
import sys

from qgis.core import QgsApplication

import build
from segearth_qgis import classFactory


def test_provider_registers_once_and_unloads(qgis_app):
    registry = QgsApplication.processingRegistry()
    registry.removeProvider("segearth")  # registered by the algorithm tests' fixture, which re-adds it when needed
    plugin = classFactory(None)
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
