"""Command-line entry points run by build.py inside the project's environment (no QGIS needed)."""

import argparse
import sys
import tempfile
import time
from pathlib import Path

DEMO_CLASSES = "background\nbuilding,roof\nroad\nwater,river\ntree,forest\nfield,grass"
RANDOM_MODEL_WARNING = """
************************************************************************************************
*  WARNING: this demo runs a RANDOMLY INITIALISED model (seeded, tiny). Its classes are         *
*  MEANINGLESS: the map shows that the pipeline runs end to end, not what is on the ground.    *
*  Real mapping needs the real weights (CLIP ViT-B/16 'openai' + SimFeatUp); see README.md.    *
************************************************************************************************
"""


def demo(out_dir):
    import numpy as np

    from .core import Vocabulary, load_model_from_checkpoints, segment_image
    from .core.preview import write_preview
    from .core.random_model import write_random_checkpoints
    from .core.synthetic import synthetic_scene

    print(RANDOM_MODEL_WARNING, file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb = synthetic_scene(480, 640, seed=0)
    vocab = Vocabulary.parse(DEMO_CLASSES)
    with tempfile.TemporaryDirectory(prefix="segearth-demo-model-") as weights:
        model = load_model_from_checkpoints(**write_random_checkpoints(weights, seed=0), device="cpu")

    def progress(done, total):
        print(f"\r  windows {done}/{total}", end="", file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = segment_image(model, rgb, vocab, prob_threshold=0.0, background_index=0, progress=progress)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    labels_path = out / "labels.npy"
    np.save(labels_path, result.labels.astype(np.uint8))
    preview = write_preview(out / "preview.png", rgb, result.labels, vocab.class_names,
                            "SegEarth-OV demo - RANDOM WEIGHTS: classes are meaningless")
    print(f"segmented a generated {rgb.shape[1]}x{rgb.shape[0]} scene into {len(vocab)} classes in {seconds:.1f} s "
          "(torch backend, cpu)")
    print(f"preview: {preview}")
    print(f"labels:  {labels_path}")
    print(RANDOM_MODEL_WARNING, file=sys.stderr)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="segearth_qgis.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="segment a generated scene with a seeded random model")
    demo_parser.add_argument("--out", default="out/demo")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
