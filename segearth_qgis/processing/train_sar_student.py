"""``segearth:train_sar_student``: distil a SAR encoder from the optical model on a co-registered raster pair."""

import json

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.common.choices import DEVICES
from .base import (
    DOUBLE,
    INTEGER,
    ProcessingFeedbackBridge,
    SegEarthAlgorithm,
    advanced,
    bundle_file,
    choice,
    configure_model_store,
    runtime_import,
)
from .segment import gdal_path

HELP_TEXT = """Trains a radar (SAR) encoder for <i>Map classes</i> from an optical raster and a SAR raster of the same \
place (AlignEarth, SegEarth-OV-2). The student starts as a copy of the optical model's visual encoder (TEACHER, an \
optical bundle exported with its checkpoints; empty: the installed default optical model) and learns to give, on \
SAR windows, the features the frozen teacher gives on the optical windows at the same pixels: CLS contrastive \
(InfoNCE over the batch), CLS cosine distillation and patch cosine distillation.
<h3>Data</h3>
The SAR raster is warped onto the optical raster's grid when their grids differ. Windows with nodata in either \
raster are skipped. The bottom fifth of the grid (at least one window) is held out: the log reports how well \
student and teacher agree there before and after training.
<h3>Output</h3>
OUTPUT gets checkpoint.pt (every 100 steps, at the end and on cancel; run again with the same folder to \
continue), losses.csv, training.json and a SAR model bundle in sar-student-&lt;folder name&gt;/ (the student's \
visual encoder with the teacher's text encoder and SimFeatUp) for <i>Map classes</i>: give it as MODEL, or let \
INSTALL make it the default SAR model. Needs torch and open_clip; a GPU (DEVICE) makes it much faster."""


class TrainSarStudentAlgorithm(SegEarthAlgorithm):
    NAME = "train_sar_student"
    DISPLAY_NAME = "Train a SAR model from an optical-SAR pair"
    HELP = HELP_TEXT

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("OPTICAL", "Optical raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("SAR", "SAR raster of the same place"))
        self.addParameter(bundle_file("TEACHER", "Optical teacher bundle (empty: the default optical model)"))
        self.addParameter(QgsProcessingParameterNumber("STEPS", "Training steps", INTEGER, 2000, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", "Windows per step", INTEGER, 8, minValue=2))
        self.addParameter(QgsProcessingParameterNumber("LEARNING_RATE", "Learning rate", DOUBLE, 1e-5,
                                                       minValue=0.0))
        self.addParameter(choice("DEVICE", "Device", DEVICES, "auto"))
        self.addParameter(QgsProcessingParameterString("POLARISATION", "SAR polarisation or band number (empty: VV, "
                                                       "else band 1)", optional=True))
        self.addParameter(advanced(QgsProcessingParameterNumber("SEED", "Random seed", INTEGER, 0, minValue=0)))
        self.addParameter(QgsProcessingParameterBoolean("INSTALL", "Install the bundle as the default SAR model",
                                                        False))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Training folder"))
        self.addOutput(QgsProcessingOutputFolder("BUNDLE", "SAR model bundle"))
        self.addOutput(QgsProcessingOutputFile("CHECKPOINT", "Last checkpoint"))
        self.addOutput(QgsProcessingOutputString("AGREEMENT", "Held-out agreement before and after (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.common.feedback import Cancelled
        from ..core.gis.raster import RasterInputError
        from ..core.runtime.bundle import BundleError
        from ..core.runtime.sessions import DeviceUnavailable
        from ..core.runtime.store import default_bundle

        paths = {}
        for name in ("OPTICAL", "SAR"):
            layer = self.parameterAsRasterLayer(parameters, name, context)
            paths[name] = gdal_path(layer) if layer is not None else None
            if not paths[name]:
                raise QgsProcessingException(f"{name} must be a raster file GDAL reads (export web layers to a "
                                             "GeoTIFF first)")
        configure_model_store()
        bridge = ProcessingFeedbackBridge(feedback)
        try:
            teacher = self.parameterAsFile(parameters, "TEACHER", context) or default_bundle("optical")
            result = runtime_import(lambda: self._train(parameters, context, paths, teacher, bridge))
            if self.parameterAsBool(parameters, "INSTALL", context):
                from ..core.runtime.store import install_bundle

                install_bundle(result.bundle, make_default=True, overwrite=True, feedback=bridge)
        except Cancelled:
            raise QgsProcessingException("cancelled: the last checkpoint is kept in the training folder; run again "
                                         "with the same folder to continue") from None
        except (BundleError, DeviceUnavailable, RasterInputError, FileExistsError) as error:
            raise QgsProcessingException(str(error)) from error
        feedback.pushInfo(f"SAR bundle: {result.bundle}")
        agreement = {"before": result.holdout_before, "after": result.holdout_after}
        return {"OUTPUT": self.parameterAsFileOutput(parameters, "OUTPUT", context), "BUNDLE": result.bundle,
                "CHECKPOINT": result.checkpoint, "AGREEMENT": json.dumps(agreement)}

    def _train(self, parameters, context, paths, teacher, bridge):
        from ..core.train.sar_student import TrainSettings, train_sar_student

        settings = TrainSettings(steps=self.parameterAsInt(parameters, "STEPS", context),
                                 batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                                 learning_rate=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
                                 device=self.parameterAsEnumString(parameters, "DEVICE", context) or "auto",
                                 polarisation=self.parameterAsString(parameters, "POLARISATION", context) or None,
                                 seed=self.parameterAsInt(parameters, "SEED", context))
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        return train_sar_student(paths["OPTICAL"], paths["SAR"], teacher, output, settings, bridge)
