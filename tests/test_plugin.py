"""The plugin inside real QGIS: the provider registers from the checkout and from the staged folder via qgis_process."""

import os
import subprocess
import sys

from qgis.core import QgsApplication

import build
from segearth_qgis import classFactory


def test_provider_registers_once_and_unloads(qgis_app):
    registry = QgsApplication.processingRegistry()
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
