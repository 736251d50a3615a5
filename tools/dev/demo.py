"""The demo's steps before and after `segearth:segment` runs in qgis_process (build.py demo): prepare, preview.

prepare writes a generated GeoTIFF and picks its model, preview draws the PNG. A smoke bundle of seeded random weights
stands in when no real model is installed.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

DEMO_CLASSES = "background\nbuilding,roof\nroad\nwater,river\ntree,forest\nfield,grass"
RANDOM_MODEL_WARNING = """
************************************************************************************************
*  WARNING: no real model is installed, so this demo runs a SMOKE BUNDLE of RANDOM weights    *
*  (seeded, tiny). Its classes are MEANINGLESS: the map shows that the pipeline runs end to   *
*  end, not what is on the ground. Real mapping needs the real weights (CLIP ViT-B/16         *
*  'openai' + SimFeatUp): python3 build.py models download optical, or offline                *
*  python3 build.py models install BUNDLE.zip (README.md: The real models).                   *
************************************************************************************************
"""


def demo_prepare(out_dir):
    """Write the demo's GeoTIFF (a generated scene in UTM 32N) and pick its model; prints both as JSON."""
    from segearth_qgis.core.runtime.bundle import BundleError
    from segearth_qgis.core.runtime.store import default_bundle
    from tools.dev.synthetic import write_scene_geotiff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_scene_geotiff(out / "scene.tif", 480, 640, seed=0)
    try:
        model, random_weights = str(default_bundle("optical")), False
    except BundleError:
        model, random_weights = str(smoke_bundle()), True
        print(RANDOM_MODEL_WARNING, file=sys.stderr)
    print(json.dumps({"input": str(path), "model": model, "random_weights": random_weights,
                      "classes": DEMO_CLASSES}))
    return 0


def smoke_bundle():
    """A tiny bundle of seeded random weights, exported once into the cache: it proves the pipeline, nothing more."""
    from segearth_qgis.core.runtime.bundle import MANIFEST, cache_root
    from segearth_qgis.core.runtime.export import export_bundle
    from tools.dev.random_model import write_random_checkpoints

    folder = cache_root() / "smoke-bundle-random-weights-v1"
    if (folder / MANIFEST).is_file():
        return folder
    print(f"exporting the smoke bundle (random weights) to {folder} once (~30 s)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="segearth-smoke-") as weights:
        checkpoints = write_random_checkpoints(weights, seed=0)
        export_bundle(checkpoints["clip"], checkpoints["upsampler"], checkpoints["arch"], folder, quick_gelu=True,
                      source={"name": "seeded random weights (smoke test only, meaningless classes)"},
                      keep_checkpoints=False, overwrite=True)
    return folder


def demo_preview(out_dir, random_weights):
    from osgeo import gdal

    from segearth_qgis.core.gis.raster import read_class_table
    from tools.dev.preview import write_preview

    out = Path(out_dir)
    scene = gdal.Open(str(out / "scene.tif")).ReadAsArray().transpose(1, 2, 0)
    labels = gdal.Open(str(out / "classes.tif")).ReadAsArray()
    names, _ = read_class_table(out / "classes.tif")
    title = "SegEarth-OV demo" + (" - RANDOM WEIGHTS: classes are meaningless" if random_weights else "")
    preview = write_preview(out / "preview.png", scene, labels, names, title)
    for name in ("scene.tif", "classes.tif", "classes.qml", "classes.gpkg", "areas.csv"):
        print(f"{name:12s} {out / name}")
    print(f"{'preview':12s} {preview}")
    if random_weights:
        print(RANDOM_MODEL_WARNING, file=sys.stderr)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.dev.demo", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "preview"])
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--random-weights", action="store_true", help="preview: say the classes are meaningless")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        return demo_prepare(args.out)
    return demo_preview(args.out, args.random_weights)


if __name__ == "__main__":
    sys.exit(main())
