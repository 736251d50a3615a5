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
        from .install_model import InstallModelAlgorithm
        from .segment import SegmentAlgorithm
        from .vectorize import VectorizeAlgorithm

        for algorithm in (SegmentAlgorithm(), VectorizeAlgorithm(), InstallModelAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "shp", "geojson", "fgb"]
