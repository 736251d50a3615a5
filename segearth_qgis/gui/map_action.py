"""Ad hoc mapping from the map window: segearth:segment on the active raster, the visible extent, the last classes."""

from qgis.core import QgsRasterLayer, QgsSettings
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from ..core.common.resources import resource_path
from ..processing.base import CLASSIFIED_PROPERTY

ACTION_NAME = "segearth_map_classes"
ACTION_TEXT = "Map classes with SegEarth-OV…"
MENU = "SegEarth-OV"
LAST_CLASSES_KEY = "segearth/last_classes"


def is_classified(layer):
    return bool(layer.customProperty(CLASSIFIED_PROPERTY)) or (layer.renderer() is not None
                                                                and layer.renderer().type() == "paletted")


class MapClassesAction:
    """A toolbar button and a Raster-menu entry; the dialog they open is kept in ``dialog`` while it is shown."""

    def __init__(self, iface):
        self.iface = iface
        self.dialog = None
        self.action = QAction(QIcon(str(resource_path("icon.svg"))), ACTION_TEXT, iface.mainWindow())
        self.action.setObjectName(ACTION_NAME)
        self.action.setToolTip("Segment the active raster layer into the classes you type, over the visible extent")
        self.action.triggered.connect(self.open_dialog)
        iface.addRasterToolBarIcon(self.action)
        iface.addPluginToRasterMenu(MENU, self.action)

    def unload(self):
        self.iface.removeRasterToolBarIcon(self.action)
        self.iface.removePluginRasterMenu(MENU, self.action)
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        self.action.deleteLater()

    def raster_layer(self):
        """The active layer if it is an image to map, else the topmost one on the map, else None. Classified rasters
        (our outputs, or any paletted layer) are skipped: after a run the new result is the active layer."""
        candidates = [self.iface.activeLayer(), *self.iface.mapCanvas().layers()]
        return next((layer for layer in candidates if isinstance(layer, QgsRasterLayer) and not is_classified(layer)),
                    None)

    def initial_parameters(self, layer):
        canvas = self.iface.mapCanvas()
        extent = canvas.extent()
        crs = canvas.mapSettings().destinationCrs()
        parameters = {"INPUT": layer,
                      "EXTENT": f"{extent.xMinimum()!r},{extent.xMaximum()!r},{extent.yMinimum()!r},"
                                f"{extent.yMaximum()!r} [{crs.authid()}]"}
        classes = QgsSettings().value(LAST_CLASSES_KEY, "", type=str)
        if classes:
            parameters["CLASSES"] = classes
        return parameters

    def open_dialog(self):
        layer = self.raster_layer()
        if layer is None:
            self.iface.messageBar().pushWarning(MENU, "Add an image layer (optical or radar) to the map and select "
                                                      "it, then map its classes.")
            return
        import processing

        dialog = processing.createAlgorithmDialog("segearth:segment", self.initial_parameters(layer))
        if dialog is None:
            self.iface.messageBar().pushCritical(MENU, "The SegEarth-OV Processing provider is not loaded: "
                                                       "see the Log Messages panel, then reload the plugin.")
            return
        dialog.algorithmFinished.connect(self.remember_classes)
        self.dialog = dialog
        dialog.show()

    def remember_classes(self, successful, _results):
        """After a successful run, the classes typed become the next dialog's starting vocabulary."""
        if successful and self.dialog is not None:
            classes = self.dialog.createProcessingParameters().get("CLASSES")
            if classes:
                QgsSettings().setValue(LAST_CLASSES_KEY, classes)
