"""``segearth:vectorize``: a classified raster to polygons with class id, class name and area, for modeler chains."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from ..compat import POLYGONS
from .base import DOUBLE, ProcessingFeedbackBridge, SegEarthAlgorithm


class VectorizeAlgorithm(SegEarthAlgorithm):
    NAME = "vectorize"
    DISPLAY_NAME = "Classes to polygons"
    HELP = ("Turns a classified raster (such as the output of <i>Map classes</i>) into polygons with the fields "
            "class_id, class_name (from the raster's category names) and area_m2 (square metres, also for "
            "geographic CRSs). Nodata pixels give no polygon. MIN_AREA merges smaller regions into their "
            "largest neighbour before polygonizing (GDAL sieve); SIMPLIFY smooths each polygon's outline "
            "(tolerance in layer units). The input raster is never modified.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Classified raster"))
        self.addParameter(QgsProcessingParameterBand("BAND", "Band", 1, "INPUT", optional=True))
        self.addParameter(QgsProcessingParameterNumber("SIMPLIFY", "Simplification tolerance (layer units, 0: "
                                                       "none)", DOUBLE, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber("MIN_AREA", "Minimum polygon area in m2", DOUBLE, 0.0,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT", "Class polygons", POLYGONS))

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.common.feedback import Cancelled
        from ..core.common.files import atomic_write
        from ..core.gis.raster import RasterInputError, read_class_table
        from ..core.gis.style import qml_path, vector_qml
        from ..core.gis.vectorize import polygonize

        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None or layer.providerType() != "gdal":
            raise QgsProcessingException("INPUT must be a classified raster file (GeoTIFF or any GDAL raster)")
        band = self.parameterAsInt(parameters, "BAND", context) or 1
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        bridge = ProcessingFeedbackBridge(feedback)
        try:
            names, colors = read_class_table(layer.source(), band)
            polygonize(layer.source(), output, class_names=names, band=band,
                       simplify=self.parameterAsDouble(parameters, "SIMPLIFY", context),
                       min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context),
                       feedback=bridge)
        except Cancelled:
            raise QgsProcessingException("cancelled: no output was written") from None
        except (RasterInputError, ValueError) as error:
            raise QgsProcessingException(str(error)) from error
        qml = vector_qml(names, colors)
        atomic_write(qml_path(output), qml)
        self.style_on_load(context, output, qml)
        return {"OUTPUT": output}
