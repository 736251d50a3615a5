"""What QGIS gets instead of the plugin on a Python older than it needs: one clear message, no traceback.

It parses on Python 3.6 (tests/qgis/test_unsupported_python.py checks): no walrus, no ``X | Y``, no match."""

import sys

from qgis.core import Qgis, QgsMessageLog

TAG = "SegEarth-OV"


def critical_level():
    """``Qgis.MessageLevel.Critical`` where the scoped enum exists, else the older ``Qgis.Critical``."""
    levels = getattr(Qgis, "MessageLevel", None)
    if levels is not None and hasattr(levels, "Critical"):
        return levels.Critical
    return Qgis.Critical


def message(minimum):
    need = ".".join(str(part) for part in minimum)
    running = ".".join(str(part) for part in sys.version_info[:3])
    return (f"SegEarth-OV needs Python {need} or newer; this QGIS runs Python {running}. Install QGIS 3.34 or newer "
            f"(or an OSGeo4W/conda QGIS with Python {need}+).")


class UnsupportedPythonPlugin:
    """Says why the plugin cannot run, in the message bar and the log; registers nothing."""

    def __init__(self, iface, minimum):
        self.iface = iface
        self.text = message(minimum)
        self.logged = False

    def log(self):
        if not self.logged:
            QgsMessageLog.logMessage(self.text, TAG, critical_level())
            self.logged = True

    def initProcessing(self):
        """qgis_process calls this without a GUI: the log only."""
        self.log()

    def initGui(self):
        self.iface.messageBar().pushMessage(TAG, self.text, critical_level(), 0)
        self.log()

    def unload(self):
        """Nothing was registered, so nothing to remove."""
