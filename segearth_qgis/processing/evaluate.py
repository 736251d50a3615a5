"""``segearth:evaluate``: IoU, mIoU and pixel accuracy of a classified raster against reference labels or polygons."""

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorFileWriter,
)

from .. import compat
from .base import INTEGER, ProcessingFeedbackBridge, SegEarthAlgorithm, advanced, choice

HELP_TEXT = """Scores a classified raster (such as the output of <i>Map classes</i>) against reference labels, with \
the metric of the SegEarth-OV papers (mmseg's IoUMetric): per class IoU = TP / (TP + FP + FN) and accuracy, mIoU over \
the classes that occur, pixel accuracy, and for two-class sets the foreground IoU.
<h3>Reference</h3>
Either a <b>label raster</b> (one band of class values; warped onto the classified grid with nearest neighbour when \
its grid differs; its nodata is not scored) or <b>polygons</b> with a CLASS_FIELD holding a class index or a class \
name (burnt at pixel centres; pixels no polygon covers are not scored).
<h3>Classes and label values</h3>
The classes are the classified raster's (its category names; a trailing <i>unclassified</i> is not a reference \
class, so its pixels count as missed), or a PRESET's. Label values are class indices; IGNORE_INDEX (default the \
preset's, else 255) is not scored; REDUCE_ZERO_LABEL (mmseg's rule, on when the preset says so) ignores 0 and moves \
the others down by one. LABEL_MAP maps stored values first, e.g. <i>128-255:1</i>, <i>7:ignore</i>, \
<i>forest:tree</i>.
<h3>Outputs</h3>
The report as JSON (scores, confusion matrix: rows reference, columns predicted), the per-class CSV and the \
confusion matrix as a PNG; the table is in the log."""


class EvaluateAlgorithm(SegEarthAlgorithm):
    NAME = "evaluate"
    DISPLAY_NAME = "Evaluate against reference labels (IoU, mIoU)"
    HELP = HELP_TEXT

    def initAlgorithm(self, config=None):
        from ..core.method.presets import preset_names

        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Classified raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("REFERENCE", "Reference labels (raster)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource("REFERENCE_POLYGONS", "Or reference polygons",
                                                              [compat.POLYGONS],
                                                              optional=True))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field of the polygons (index or name)",
                                                      parentLayerParameterName="REFERENCE_POLYGONS", optional=True))
        self.addParameter(choice("PRESET", "Dataset preset (classes and label encoding)", preset_names(),
                                 optional=True))
        self.addParameter(QgsProcessingParameterString("LABEL_MAP", "Label map (e.g. 128-255:1, 7:ignore, "
                                                       "forest:tree)", optional=True))
        self.addParameter(advanced(QgsProcessingParameterNumber("IGNORE_INDEX", "Ignore index (default the "
                                                                "preset's, else 255)", INTEGER, None, optional=True,
                                                                minValue=0)))
        self.addParameter(advanced(QgsProcessingParameterBoolean("REDUCE_ZERO_LABEL", "Reduce zero label (0 "
                                                                 "ignored, others minus one; on when the preset "
                                                                 "says so)", False)))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Report (JSON)", "JSON files (*.json)"))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_CSV", "Per-class scores (CSV)",
                                                                "CSV files (*.csv)", optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_PLOT", "Confusion matrix (PNG)",
                                                                "PNG files (*.png)", optional=True))
        self.addOutput(QgsProcessingOutputNumber("MIOU", "mIoU (%)"))
        self.addOutput(QgsProcessingOutputNumber("PIXEL_ACCURACY", "Pixel accuracy (%)"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report (JSON text)"))

    def processAlgorithm(self, parameters: dict, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict:
        import json

        from ..core.common.feedback import Cancelled
        from ..core.eval.classified import score_against_reference
        from .segment import gdal_path, optional_value

        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None or gdal_path(layer) is None:
            raise QgsProcessingException("INPUT must be a classified raster file (GeoTIFF or any GDAL raster)")
        classified = gdal_path(layer)
        reference_layer = self.parameterAsRasterLayer(parameters, "REFERENCE", context)
        polygons = optional_value(parameters, "REFERENCE_POLYGONS") is not None
        if (reference_layer is None) == (not polygons):
            raise QgsProcessingException("give either a reference label raster (REFERENCE) or reference polygons "
                                         "(REFERENCE_POLYGONS with CLASS_FIELD), not both or neither")
        class_field = self.parameterAsString(parameters, "CLASS_FIELD", context) if polygons else None
        layer_name = None
        if polygons:
            if not class_field:
                raise QgsProcessingException("reference polygons need CLASS_FIELD: the field holding each "
                                             "polygon's class index or class name")
            reference, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, "REFERENCE_POLYGONS", context, QgsVectorFileWriter.supportedFormatExtensions(), "gpkg",
                feedback)
        else:
            reference = gdal_path(reference_layer)
            if reference is None:
                raise QgsProcessingException("REFERENCE must be a label raster file (any GDAL raster)")
        ignore_index = (self.parameterAsInt(parameters, "IGNORE_INDEX", context)
                        if optional_value(parameters, "IGNORE_INDEX") is not None else None)
        try:
            report = score_against_reference(
                classified, reference, preset_name=self.parameterAsEnumString(parameters, "PRESET", context) or None,
                label_map=self.parameterAsString(parameters, "LABEL_MAP", context), ignore_index=ignore_index,
                reduce_zero_label=self.parameterAsBool(parameters, "REDUCE_ZERO_LABEL", context),
                class_field=class_field, layer_name=layer_name, feedback=ProcessingFeedbackBridge(feedback))
        except Cancelled:
            raise QgsProcessingException("cancelled: no output was written") from None
        except ValueError as error:
            raise QgsProcessingException(str(error)) from error
        outputs = {"OUTPUT": self.parameterAsFileOutput(parameters, "OUTPUT", context),
                   "OUTPUT_CSV": self.parameterAsFileOutput(parameters, "OUTPUT_CSV", context) or None,
                   "OUTPUT_PLOT": self.parameterAsFileOutput(parameters, "OUTPUT_PLOT", context) or None}
        report.write(outputs["OUTPUT"], outputs["OUTPUT_CSV"], outputs["OUTPUT_PLOT"], warn=feedback.pushWarning)
        summary = report.as_dict()
        return {**outputs, "MIOU": summary["miou"], "PIXEL_ACCURACY": summary["pixel_accuracy"],
                "REPORT": json.dumps(summary)}
