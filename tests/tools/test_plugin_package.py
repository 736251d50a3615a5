"""The plugin as build.py stages and zips it: the zip installs into a fresh profile, staging can be repeated, and
package refuses what plugins.qgis.org would (missing metadata or licence, binaries, medium/high Bandit findings)."""

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.build import plugin
from tools.build.environment import ROOT, SetupError
from tools.build.plugin import METADATA_REQUIRED, PACKAGE_FORBIDDEN, PACKAGE_LIMIT_BYTES, package, qgis_env

VENV = Path(sys.prefix)  # the tests run in the project's venv, where bandit is


def test_package_zip_installs_into_a_fresh_profile_and_the_provider_loads(tmp_path):
    zipped = package(tmp_path / "dist", VENV)
    assert zipped.stat().st_size < PACKAGE_LIMIT_BYTES
    with zipfile.ZipFile(zipped) as archive:
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
    first = qgis_env(VENV, tmp_path)
    second = qgis_env(VENV, tmp_path)
    assert first["QGIS_CUSTOM_CONFIG_PATH"] == second["QGIS_CUSTOM_CONFIG_PATH"] == str(tmp_path / "profile")
    assert (tmp_path / "plugins" / "segearth_qgis" / "metadata.txt").is_file()


def test_the_zip_holds_the_licence_the_notice_complete_metadata_and_nothing_else(tmp_path, capsys):
    zipped = package(tmp_path / "dist", VENV)
    assert "bandit: 0 medium/high" in capsys.readouterr().out
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        assert archive.read("segearth_qgis/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert archive.read("segearth_qgis/LICENSE").lstrip().startswith(b"GNU GENERAL PUBLIC LICENSE")
        assert b"GPL-2.0-or-later" in archive.read("segearth_qgis/NOTICE")
        metadata = configparser.ConfigParser(interpolation=None)
        metadata.read_string(archive.read("segearth_qgis/metadata.txt").decode("utf-8"))
        assert not [key for key in METADATA_REQUIRED if not metadata["general"].get(key, "").strip()]
        assert all(name.startswith("segearth_qgis/") for name in names)
        assert not [name for name in names if "tools" in name.split("/")[:-1]]
        assert not [name for name in names if Path(name).suffix.lower() in PACKAGE_FORBIDDEN]
        assert not [name for name in names if b"\0" in archive.read(name)[:8192]]


def test_metadata_without_an_email_is_refused_naming_the_field(tmp_path):
    lacking = tmp_path / "metadata.txt"
    text = (ROOT / "metadata.txt").read_text(encoding="utf-8")
    lacking.write_text("".join(line for line in text.splitlines(True) if not line.startswith("email=")),
                       encoding="utf-8")
    with pytest.raises(SetupError, match=r"lacks email\b"):
        package(tmp_path / "dist", VENV, metadata=lacking)
    assert not (tmp_path / "dist").exists()


def staged_with(monkeypatch, change):
    """package() stages through ``change(staged folder)`` after the real staging."""
    real = plugin.stage_plugin

    def stage(destination, metadata=ROOT / "metadata.txt"):
        staged = real(destination, metadata)
        change(staged)
        return staged

    monkeypatch.setattr(plugin, "stage_plugin", stage)


def test_a_staged_binary_or_a_missing_licence_is_refused(tmp_path, monkeypatch):
    staged_with(monkeypatch, lambda staged: (staged / "resources" / "table.dat").write_bytes(b"\x89PNG\0\0\x01"))
    with pytest.raises(SetupError, match="segearth_qgis/resources/table.dat"):
        package(tmp_path / "dist", VENV)
    staged_with(monkeypatch, lambda staged: (staged / "LICENSE").unlink())
    with pytest.raises(SetupError, match="no LICENSE"):
        package(tmp_path / "dist", VENV)


def test_a_medium_bandit_finding_is_refused_naming_the_file(tmp_path, monkeypatch):
    planted = "import pickle\n\n\ndef load(data):\n    return pickle.loads(data)\n"
    staged_with(monkeypatch, lambda staged: (staged / "core" / "planted.py").write_text(planted))
    with pytest.raises(SetupError, match=r"segearth_qgis/core/planted\.py:5 B301"):
        package(tmp_path / "dist", VENV)
    assert not list((tmp_path / "dist").glob("*.zip"))
