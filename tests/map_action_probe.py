"""Run by the QGIS desktop (qgis --code): the map action end to end; report.json and screenshots go to $PROBE_OUT."""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingContext, QgsProject, QgsRasterLayer, QgsRectangle, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QEventLoop, QTimer
from qgis.PyQt.QtWidgets import QAction, QApplication
from qgis.utils import iface, plugins, reloadPlugin

OUT = Path(os.environ["PROBE_OUT"])
report = {}


def finish(code=0):
    (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))
    QgsProject.instance().setDirty(False)
    os._exit(code)


def wait(signal, seconds):
    loop = QEventLoop()
    signal.connect(lambda *args: loop.quit())
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def our_actions():
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    return iface.mainWindow().findChildren(QAction, "segearth_map_classes")


def menu_entries():
    menus = [a.menu() for a in iface.rasterMenu().actions() if a.menu() and a.menu().title() == "SegEarth-OV"]
    return [[a.text() for a in menu.actions()] for menu in menus]


def probe():
    layer = QgsRasterLayer(os.environ["PROBE_RASTER"], "scene")
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    full = layer.extent()
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(full.xMinimum() + 0.1 * full.width(), full.yMinimum() + 0.2 * full.height(),
                                  full.xMinimum() + 0.7 * full.width(), full.yMaximum() - 0.1 * full.height()))
    canvas.refresh()
    shown = canvas.extent()
    report.update(layer_id=layer.id(), layer_source=layer.source(), crs=layer.crs().authid(),
                  canvas_extent=[shown.xMinimum(), shown.xMaximum(), shown.yMinimum(), shown.yMaximum()])
    QgsSettings().setValue("segearth/last_classes", os.environ["PROBE_LAST_CLASSES"])
    report["actions_at_start"] = len(our_actions())
    reloadPlugin("segearth_qgis")
    report["actions_after_reload"] = len(our_actions())
    report["menu_after_reload"] = menu_entries()
    registry = QgsApplication.processingRegistry()
    report["providers_after_reload"] = sum(p.id() == "segearth" for p in registry.providers())
    our_actions()[0].trigger()
    dialog = plugins["segearth_qgis"].map_action.dialog
    report["dialog_initial"] = dialog.createProcessingParameters()
    dialog.setParameters({"CLASSES": os.environ["PROBE_CLASSES"], "MODEL": os.environ["PROBE_BUNDLE"],
                          "DEVICE": "cpu", "OUTPUT": str(OUT / "classes.tif"),
                          "OUTPUT_VECTOR": str(OUT / "classes.gpkg")})
    parameters = dialog.createProcessingParameters()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    ok, message = dialog.algorithm().checkParameterValues(parameters, context)
    if not ok:  # the dialog would block on a message box
        report["error"] = f"parameters rejected: {message}"
        return finish(2)
    results = {}
    dialog.algorithmFinished.connect(lambda successful, result: results.update(ok=successful, result=result))
    dialog.runAlgorithm()
    if "ok" not in results:
        wait(dialog.algorithmFinished, 120)
    report["run"] = results
    QApplication.processEvents()
    loaded = {}
    for item in QgsProject.instance().mapLayers().values():
        renderer = item.renderer()
        if renderer is None or item.id() == layer.id():
            continue
        if renderer.type() == "paletted":
            labels = [c.label for c in renderer.classes()]
        else:
            labels = [c.label() for c in getattr(renderer, "categories", lambda: [])()]
        loaded[item.source().split("|")[0]] = {"renderer": renderer.type(), "labels": labels}
    report["loaded"] = loaded
    report["last_classes"] = QgsSettings().value("segearth/last_classes", "", type=str)
    dialog.close()
    canvas.refreshAllLayers()
    wait(canvas.mapCanvasRefreshed, 30)
    canvas.saveAsImage(str(OUT / "map.png"))
    our_actions()[0].trigger()
    again = plugins["segearth_qgis"].map_action.dialog
    again_parameters = again.createProcessingParameters()
    report["dialog_again_classes"] = again_parameters.get("CLASSES")
    report["dialog_again_input"] = again_parameters.get("INPUT")
    report["active_after_run"] = iface.activeLayer().id() if iface.activeLayer() else None
    QApplication.processEvents()
    QApplication.primaryScreen().grabWindow(0).save(str(OUT / "screen.png"))
    again.close()
    finish(0)


def guarded():
    try:
        probe()
    except Exception:
        report["error"] = traceback.format_exc()
        finish(1)


QTimer.singleShot(240_000, lambda: (report.update(error="timed out"), finish(3)))
QTimer.singleShot(500, guarded)
