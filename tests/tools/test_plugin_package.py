"""The plugin as build.py stages and zips it: the zip installs into a fresh profile, staging can be repeated."""

import os
import subprocess
import sys

from tools.build.plugin import PACKAGE_LIMIT_BYTES, package, qgis_env


def test_package_zip_installs_into_a_fresh_profile_and_the_provider_loads(tmp_path):
    import zipfile

    zipped = package(tmp_path / "dist")
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
    from pathlib import Path

    first = qgis_env(Path(sys.prefix), tmp_path)
    second = qgis_env(Path(sys.prefix), tmp_path)
    assert first["QGIS_CUSTOM_CONFIG_PATH"] == second["QGIS_CUSTOM_CONFIG_PATH"] == str(tmp_path / "profile")
    assert (tmp_path / "plugins" / "segearth_qgis" / "metadata.txt").is_file()
