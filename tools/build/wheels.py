"""The wheel folder a user makes for an offline install (README: In QGIS), made the same way for the installer
tests: `pip download` of the onnx profile's CPU wheels and pip, for this Python or the QGIS 3.40 root's."""

import hashlib
import json
import os
import shutil
import subprocess

from .environment import ROOT, cache_dir, say

WHEEL_PLATFORMS = ["manylinux2014", "manylinux_2_17", "manylinux_2_27", "manylinux_2_28", "manylinux_2_34"]


def offline_wheels(venv, python_version=None):
    """The onnx profile's CPU wheels and a pip wheel, saved by `pip download` as a user makes a folder for an offline
    install (README: In QGIS); the installer tests install from it. For this Python, or for CPython
    ``python_version`` on x86-64 Linux (the QGIS 3.40 root's). Cached by the pins."""
    pins = json.loads((ROOT / "resources" / "dependencies.json").read_text())
    pip_version = pins["pip"]["wheel"].split("-")[1]
    requirements = [pins["onnxruntime"]["cpu"], *pins["profiles"]["onnx"], f"pip=={pip_version}"]
    target = []
    if python_version:
        target = ["--python-version", python_version, "--implementation", "cp",
                  *(f"--platform={tag}_x86_64" for tag in WHEEL_PLATFORMS)]
    key = hashlib.sha256(json.dumps([requirements, target]).encode()).hexdigest()[:16]
    folder = cache_dir() / f"wheels-{key}"
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    say(f"wheels: downloading {' '.join(requirements)} (Python {python_version or 'of the venv'}) for the "
        "offline-install tests")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--only-binary=:all:", *target, "--dest", str(partial), *requirements], check=True)
    (partial / ".complete").write_text(json.dumps([requirements, target]) + "\n")
    os.replace(partial, folder)
    return folder
