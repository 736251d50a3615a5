"""The 3.22 half of the cross-version check that ``build.py test --qgis 3.40`` runs.

``python tests/cross_version.py OUT`` (in the QGIS 3.22 environment, where torch exports) writes into OUT the tiny
bundle and its zip, a scene, and the scene segmented by ``segearth:segment``; ``test_cross_version.py`` then segments
the same scene with the zip under QGIS 3.40 and compares.
"""

import json
import shutil
import sys
from pathlib import Path

CLASSES = "background\nbuilding,roof\nroad\nwater,river\ntree"
SCENE = {"height": 300, "width": 420, "seed": 11}
AGREEMENT = 0.999  # share of pixels whose labels must be equal


def segment_parameters(scene, bundle, out):
    return {"INPUT": str(scene), "CLASSES": CLASSES, "MODEL": str(bundle), "DEVICE": "cpu", "BACKEND": "onnx",
            "OUTPUT": str(Path(out) / "classes.tif")}


def write_reference(out):
    from rasters import scene_bands, write_geotiff

    from segearth_qgis.core.runtime.export import export_bundle
    from tools.dev.random_model import write_random_checkpoints

    out = Path(out)
    checkpoints = write_random_checkpoints(out / "checkpoints", seed=0)
    bundle = export_bundle(checkpoints["clip"], checkpoints["upsampler"], checkpoints["arch"], out / "tiny-optical",
                           quick_gelu=True, make_zip=True)
    shutil.rmtree(out / "checkpoints")
    scene = write_geotiff(out / "scene.tif", scene_bands(**SCENE))
    qgis_version, result = run_segment(segment_parameters(scene, bundle, out / "reference"))
    (out / "reference.json").write_text(json.dumps({"qgis": qgis_version, "runtime": result["RUNTIME"]}, indent=1))


def run_segment(parameters):
    """segearth:segment through processing.run in a standalone QGIS application."""
    from qgis.core import Qgis, QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    import processing
    from processing.core.Processing import Processing

    from segearth_qgis.processing.provider import SegEarthProvider

    Processing.initialize()
    provider = SegEarthProvider()  # the registry does not keep the Python object alive
    QgsApplication.processingRegistry().addProvider(provider)
    result = processing.run("segearth:segment", parameters)
    app.exitQgis()
    return Qgis.QGIS_VERSION, result


if __name__ == "__main__":
    write_reference(sys.argv[1])
