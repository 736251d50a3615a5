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


def export(args):
    from .core.export import ExportError, export_bundle

    try:
        export_bundle(args.clip, args.upsampler, args.arch, args.out, quick_gelu=args.quick_gelu,
                      attention=args.attention, last_n=args.last_n, modality=args.modality,
                      gba_lambda=args.gba_lambda, keep_checkpoints=not args.no_checkpoints, tolerance=args.tolerance,
                      make_zip=args.zip, overwrite=args.overwrite)
    except (ExportError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    return 0


def bench(args):
    from .core import bench as benchmarks

    return benchmarks.speed(args.arch, args.size, args.runs) if args.what == "speed" else 2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="segearth_qgis.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="segment a generated scene with a seeded random model")
    demo_parser.add_argument("--out", default="out/demo")
    exp = sub.add_parser("export", help="export checkpoints to a validated ONNX bundle")
    exp.add_argument("--clip", required=True, help="open_clip CLIP state dict (.pt, .bin, .safetensors)")
    exp.add_argument("--upsampler", help="SimFeatUp checkpoint (Lightning format); omit for no upsampler")
    exp.add_argument("--arch", required=True, help="open_clip model name (ViT-B-16) or model-config JSON")
    exp.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI weights)")
    exp.add_argument("--attention", default="SegEarth", choices=["SegEarth", "SCLIP", "ClearCLIP", "vanilla"])
    exp.add_argument("--last-n", type=int, default=1)
    exp.add_argument("--modality", default="optical", choices=["optical", "sar"])
    exp.add_argument("--gba-lambda", type=float, default=0.3, help="default lambda of global bias alleviation")
    exp.add_argument("--out", required=True, help="the bundle folder to write (its name is the bundle's name)")
    exp.add_argument("--zip", action="store_true", help="also write the bundle as DIR.zip")
    exp.add_argument("--no-checkpoints", action="store_true", help="leave the torch checkpoints out of the bundle")
    exp.add_argument("--tolerance", type=float, default=1e-4, help="largest relative onnx-vs-torch difference")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    bench_parser = sub.add_parser("bench", help="benchmarks that print figures")
    bench_parser.add_argument("what", choices=["speed"])
    bench_parser.add_argument("--arch", default="ViT-B-16")
    bench_parser.add_argument("--size", type=int, default=448, help="side of the square test image")
    bench_parser.add_argument("--runs", type=int, default=1, help="timed runs per implementation (best is kept)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out)
    if args.command == "export":
        return export(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
