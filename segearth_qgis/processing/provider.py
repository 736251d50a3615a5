"""The Processing provider ``segearth``; it loads without torch or onnxruntime, which the algorithms import lazily."""

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..core.common.resources import resource_path
from ..core.common.signals import install_cleanup_handlers
from .base import MODEL_DIR_SETTING, runtime_root


class SegEarthProvider(QgsProcessingProvider):
    def id(self):
        return "segearth"

    def name(self):
        return "SegEarth-OV"

    def longName(self):
        return "SegEarth-OV open-vocabulary mapping"

    def icon(self):
        return QIcon(str(resource_path("icon.svg")))

    def load(self):
        """Outside the desktop, SIGTERM and SIGHUP remove the outputs in flight; logs which runtimes are installed
        (found without importing them), registers the Model folder setting (Options > Processing > Providers), then
        the algorithms."""
        from ..core.setup.dependencies import active_site, changed_since_install, detect

        # the desktop's main thread waits in Qt's event loop, where a Python handler would hold the signal back
        if QgsApplication.platform() != "desktop":
            install_cleanup_handlers()

        root = runtime_root()
        QgsMessageLog.logMessage(f"runtime: {detect(active_site(root)).summary()}", self.name(),
                                 Qgis.MessageLevel.Info)
        for name, was, now in changed_since_install(root):
            QgsMessageLog.logMessage(f"the runtime in {root} was installed for {name} {was}; QGIS now has {now}. If "
                                     "a run fails to import, run Install dependencies with ACTION repair",
                                     self.name(), Qgis.MessageLevel.Warning)
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # no Processing plugin (bare PyQGIS): the algorithms read the setting all the same
            return super().load()
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(self.name(), MODEL_DIR_SETTING, "Model folder (empty: the user's data "
                                            "folder; SEGEARTH_MODEL_DIR overrides it)", "",
                                            valuetype=Setting.FOLDER))
        ProcessingConfig.readSettings()
        return super().load()

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(MODEL_DIR_SETTING)

    def loadAlgorithms(self):
        from .evaluate import EvaluateAlgorithm
        from .install_dependencies import InstallDependenciesAlgorithm
        from .install_model import InstallModelAlgorithm
        from .segment import SegmentAlgorithm
        from .train_sar_student import TrainSarStudentAlgorithm
        from .vectorize import VectorizeAlgorithm

        for algorithm in (SegmentAlgorithm(), VectorizeAlgorithm(), EvaluateAlgorithm(), InstallModelAlgorithm(),
                          TrainSarStudentAlgorithm(), InstallDependenciesAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "shp", "geojson", "fgb"]
