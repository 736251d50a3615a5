"""Run in a GUI-enabled QGIS process: open the segearth:segment dialog, round-trip parameters, save a screenshot."""

import json
import sys

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

app = QgsApplication([], True)
app.initQgis()
from qgis.gui import QgsGui  # noqa: E402

QgsGui.editorWidgetRegistry().initEditors()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing  # noqa: E402
from processing.gui.AlgorithmDialog import AlgorithmDialog  # noqa: E402

from segearth_qgis.processing.provider import SegEarthProvider  # noqa: E402

Processing.initialize()
provider = SegEarthProvider()  # the registry does not keep the Python object alive
QgsApplication.processingRegistry().addProvider(provider)
raster_path, bundle, screenshot = sys.argv[1:4]
layer = QgsRasterLayer(raster_path, "scene")
QgsProject.instance().addMapLayer(layer)
algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
dialog = AlgorithmDialog(algorithm)
given = {"INPUT": layer.id(), "CLASSES": "building,roof\nroad\nwater,river", "PRESET": "potsdam",
         "BANDS": [3, 2, 1], "RESOLUTION": 0.8, "THRESHOLD": 0.25, "BACKGROUND": "road", "MODEL": bundle,
         "DEVICE": "cpu", "WINDOW": 224, "STRIDE": 112, "GBA_LAMBDA": 0.3, "BACKEND": "onnx"}
dialog.setParameters(given)
dialog.resize(900, 900)
dialog.show()
app.processEvents()
dialog.grab().save(screenshot)
back = dialog.mainWidget().createProcessingParameters() if hasattr(dialog, "mainWidget") and hasattr(
    dialog.mainWidget(), "createProcessingParameters") else dialog.createProcessingParameters()
print(json.dumps({k: (v if isinstance(v, (str, int, float, list, type(None))) else str(v)) for k, v in back.items()}))
dialog.close()
app.exitQgis()
