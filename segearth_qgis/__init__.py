"""SegEarth-OV for QGIS, open-vocabulary land-cover mapping; QGIS loads it through ``classFactory``, kept light.

This file and ``unsupported.py`` parse on Python 3.6, so that a QGIS with too old a Python shows one message, not a
traceback."""

import sys

# onnxruntime 1.31 has no wheels for older Pythons, and the code uses 3.10+ syntax (``int | None``).
MINIMUM_PYTHON = (3, 11)


def classFactory(iface):
    if sys.version_info[:2] < MINIMUM_PYTHON:
        from .unsupported import UnsupportedPythonPlugin

        return UnsupportedPythonPlugin(iface, MINIMUM_PYTHON)
    from .plugin import SegEarthPlugin

    return SegEarthPlugin(iface)
