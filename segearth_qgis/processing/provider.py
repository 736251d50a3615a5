"""The Processing provider ``segearth``; it loads without torch or onnxruntime, which the algorithms import lazily."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..core.resources import resource_path


class SegEarthProvider(QgsProcessingProvider):
    def id(self):
        return "segearth"

    def name(self):
        return "SegEarth-OV"

    def longName(self):
        return "SegEarth-OV open-vocabulary mapping"

    def icon(self):
        return QIcon(str(resource_path("icon.svg")))

    def loadAlgorithms(self):
        """The algorithms (segment, vectorize, ...) are added by the Processing issue; none ship yet."""
