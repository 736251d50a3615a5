"""The plugin's pipeline from a terminal, without QGIS: segment, evaluate, export, models and train-sar.

build.py runs them in the project's environment; ``python -m segearth_qgis.cli COMMAND --help``.
"""

import argparse
import sys
import traceback
from pathlib import Path

from .core.common.checks import MAX_WINDOWS
from .core.common.choices import (
    ATTENTIONS,
    BACKENDS,
    DEVICES,
    EVALUATION_PIPELINES,
    MODALITIES,
    MODEL_SOURCES,
    PRECISIONS,
    SENSORS,
)
from .core.common.failures import CANCELLED, failure_sentence
from .core.common.signals import install_cleanup_handlers


def console_feedback(quiet=False):
    """The pipeline's feedback on a terminal: a progress bar on stderr, messages as lines (Ctrl+C stops the run)."""
    from .core.common.feedback import Feedback

    class ConsoleFeedback(Feedback):
        bar_open = False  # a bar is drawn and its line not ended: a message starts a new line

        def progress(self, fraction):
            if not quiet:
                filled = int(30 * fraction)
                print(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f} %", end="", file=sys.stderr,
                      flush=True)
                self.bar_open = fraction < 1
                if fraction >= 1:
                    print(file=sys.stderr)

        def line(self, text):
            if self.bar_open:
                print(file=sys.stderr)
                self.bar_open = False
            print(text, file=sys.stderr)

        def info(self, text):
            if not quiet:
                self.line(text)

        def warn(self, text):
            self.line(f"warning: {text}")

    return ConsoleFeedback()


def segment(args):
    """The Processing algorithm's pipeline without QGIS: GDAL in, GeoTIFF (and polygons) out."""
    from .core.pipeline import SegmentOutputs, check_request, resolve_options, segment_raster
    from .core.runtime.loader import load_model

    feedback = console_feedback(args.quiet)
    options, modality, notes = resolve_options(
        classes=args.classes, preset=args.preset,
        threshold=args.threshold, background=args.background, gba_lambda=args.gba_lambda, window=args.window,
        stride=args.stride, resolution=args.resolution, bands=args.bands,
        extent=tuple(args.extent) if args.extent else None, input_path=args.input, sensor=args.sensor,
        polarisation=args.polarisation, model_path=args.model, allow_large=args.allow_large)
    for note in notes:
        feedback.info(note)
    outputs = SegmentOutputs(args.output, confidence=args.confidence, vector=args.vector, areas_csv=args.areas,
                             simplify=args.simplify, min_area_m2=args.min_area)
    check_request(args.input, outputs, options)
    model = load_model(args.model, modality, args.backend, args.device, args.precision)
    feedback.info(f"runtime: {model.runtime}")
    result = segment_raster(model, args.input, outputs, options, feedback)
    for kind, path in result.outputs.items():
        print(f"{kind}: {path}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Score the model on a labelled folder as the papers did; prints the table, writes JSON, CSV and a PNG."""
    from .core.common.outputs import check_output_paths
    from .core.eval.dataset import EvaluationSettings, evaluate_dataset

    feedback = console_feedback(args.quiet)
    out = Path(args.out)
    check_output_paths({"--images": folder_files(args.images), "--labels": folder_files(args.labels)},
                       {"--out": out, "--out (CSV)": out.with_suffix(".csv"), "--out (PNG)": out.with_suffix(".png")})
    settings = EvaluationSettings(
        preset=args.preset, classes=args.classes, model=args.model,
        label_map=args.label_map, ignore_index=args.ignore_index, reduce_zero_label=args.reduce_zero_label,
        label_suffix=args.label_suffix, split=args.split, resize_longer_side=args.resize, pipeline=args.pipeline,
        resolution=args.resolution, save_predictions=args.save_predictions, backend=args.backend,
        device=args.device, precision=args.precision)
    report = evaluate_dataset(args.images, args.labels, settings, feedback)
    print(report.table())
    written = report.write(out, out.with_suffix(".csv"), out.with_suffix(".png"), warn=feedback.warn)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if args.save_predictions:
        print(f"predictions: {args.save_predictions}")
    return 0


def folder_files(folder: str) -> list[Path]:
    """The files directly in ``folder`` (none when it is not a folder: the command then says so itself)."""
    path = Path(folder)
    return [p for p in path.iterdir() if p.is_file()] if path.is_dir() else []


def export(args):
    from .core.common.feedback import CallbackFeedback
    from .core.runtime.export import export_bundle

    export_bundle(args.clip, args.upsampler, args.arch, args.out, quick_gelu=args.quick_gelu,
                  attention=args.attention, last_n=args.last_n, modality=args.modality,
                  gba_lambda=args.gba_lambda, keep_checkpoints=not args.no_checkpoints, tolerance=args.tolerance,
                  make_zip=args.zip, overwrite=args.overwrite, feedback=CallbackFeedback(log=print))
    return 0


def models(args):
    """The model store from the command line: download the official weights, list, install offline bundles."""
    from .core.runtime.store import download_model, install_bundle, installed_bundles, model_store

    feedback = console_feedback()
    if args.action == "download":
        for modality in MODALITIES if args.which == "all" else (args.which,):
            download_model(modality, feedback=feedback)
    elif args.action == "install":
        install_bundle(args.bundle, make_default=not args.no_default, overwrite=args.overwrite, feedback=feedback)
    else:
        found = installed_bundles()
        print(f"model store: {model_store()}")
        for entry in found:
            print(f"  {entry['name']:<32} {entry['modality']:<8} {entry['bytes'] / 2 ** 20:8.1f} MB"
                  f"{'  (default)' if entry['default'] else ''}")
        if not found:
            print("  no bundles installed: python3 build.py models download optical")
    return 0


def train_sar(args: argparse.Namespace) -> int:
    """segearth:train_sar_student without QGIS: a SAR student distilled from an optical teacher bundle."""
    from .core.runtime.store import default_bundle
    from .core.train.sar_student import TrainSettings, train_sar_student

    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             device=args.device, polarisation=args.polarisation, seed=args.seed)
    result = train_sar_student(args.optical, args.sar, args.teacher or default_bundle("optical"), args.out,
                               settings, console_feedback())
    print(f"bundle: {result.bundle}")
    return 0


QUIET_HELP = "no progress bar or log lines"
DEBUG_HELP = "print the traceback of a failure"


def add_model_arguments(parser):
    """The model and where it runs, alike for every command that maps."""
    parser.add_argument("--model", help="model bundle folder, manifest.json or zip (default: the installed model)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp16: the encoder and SimFeatUp in half precision, CUDA and the torch backend only")


def add_segment_parser(sub):
    seg = sub.add_parser("segment", help="segment a raster into a classified GeoTIFF (the algorithm's pipeline)")
    seg.set_defaults(run=segment, cancelled=CANCELLED)
    seg.add_argument("input", help="any raster GDAL opens")
    seg.add_argument("output", help="the classified GeoTIFF to write")
    seg.add_argument("--classes", help="one class per line (or '\\n' between classes), commas between synonyms")
    seg.add_argument("--preset", help="an official dataset preset, e.g. openearthmap, loveda, potsdam")
    seg.add_argument("--sensor", default="auto", choices=SENSORS,
                     help="auto: radar only on evidence in the file (complex type, polarisation names, SAR metadata)")
    seg.add_argument("--polarisation", help="SAR: a polarisation (VV, VH, HH, HV) or a band number; default VV")
    add_model_arguments(seg)
    seg.add_argument("--resolution", type=float, default=0.0, help="processing resolution in metres (0: native)")
    seg.add_argument("--bands", nargs="+", help="1-based bands used as red, green, blue: 3 2 1 or 3,2,1")
    seg.add_argument("--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                     help="part of the raster, in its CRS")
    seg.add_argument("--threshold", type=float, help="background probability threshold (default 0 or the preset's)")
    seg.add_argument("--background", help="the class taking pixels below the threshold")
    seg.add_argument("--gba-lambda", type=float)
    seg.add_argument("--window", type=int)
    seg.add_argument("--stride", type=int)
    seg.add_argument("--vector", help="also write polygons (.gpkg, .shp, .geojson, .fgb)")
    seg.add_argument("--confidence", help="also write the winning class's probability as a float32 GeoTIFF")
    seg.add_argument("--areas", help="also write the class areas as CSV")
    seg.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance (layer units)")
    seg.add_argument("--min-area", type=float, default=0.0, help="minimum polygon area in m2")
    seg.add_argument("--allow-large", action="store_true",
                     help=f"run even when the estimate is over {MAX_WINDOWS:,} windows (hours of work)")
    seg.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_evaluate_parser(sub):
    ev = sub.add_parser("evaluate", help="mIoU / IoU on a labelled folder, as the papers measure it")
    ev.set_defaults(run=evaluate, cancelled="cancelled: no report or prediction was written")
    ev.add_argument("--images", required=True, help="folder of images (png, jpg, tif...)")
    ev.add_argument("--labels", required=True, help="folder of one-band label rasters, paired with the images by name")
    ev.add_argument("--preset", help="the dataset's preset (classes, threshold, resize, window, label encoding)")
    ev.add_argument("--classes", help="replace the preset's classes, as in segment ('\\n' between classes)")
    ev.add_argument("--label-map", help="stored label values to classes: '255:1', '128-255:1', '7:ignore', 'a:road'")
    ev.add_argument("--ignore-index", type=int, help="label value not scored (default the preset's, else 255)")
    ev.add_argument("--reduce-zero-label", action="store_true",
                    help="mmseg's rule: label 0 is ignored and the others move down by one (on if the preset says so)")
    ev.add_argument("--label-suffix", default="", help="label names are the image's stem plus this suffix, e.g. "
                                                       "'_instance_color_RGB.png' (default: any extension)")
    ev.add_argument("--split", help="text file of the image names to use, one per line (mmseg's ann_file)")
    ev.add_argument("--resize", type=int, help="paper pipeline: longer side in pixels (default the preset's, 448)")
    ev.add_argument("--pipeline", default="paper", choices=EVALUATION_PIPELINES,
                    help="paper: each image resized and windowed as the papers did (default); map: the streaming "
                         "segment pipeline on georeferenced rasters of any size")
    ev.add_argument("--resolution", type=float, default=0.0, help="map pipeline: processing resolution in metres")
    add_model_arguments(ev)
    ev.add_argument("--save-predictions", help="folder for the classified rasters (<image name>.tif)")
    ev.add_argument("--out", default="out/evaluate/report.json", help="the JSON report; the CSV and PNG go beside it")
    ev.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_export_parser(sub):
    exp = sub.add_parser("export", help="export checkpoints to a validated ONNX bundle")
    exp.set_defaults(run=export, cancelled="cancelled: no bundle was written")
    exp.add_argument("--clip", required=True, help="open_clip CLIP state dict (.pt, .bin, .safetensors)")
    exp.add_argument("--upsampler", help="SimFeatUp checkpoint (Lightning format); omit for no upsampler")
    exp.add_argument("--arch", required=True, help="open_clip model name (ViT-B-16) or model-config JSON")
    exp.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI weights)")
    exp.add_argument("--attention", default="SegEarth", choices=ATTENTIONS)
    exp.add_argument("--last-n", type=int, default=1)
    exp.add_argument("--modality", default="optical", choices=MODALITIES)
    exp.add_argument("--gba-lambda", type=float, default=0.3, help="default lambda of global bias alleviation")
    exp.add_argument("--out", required=True, help="the bundle folder to write (its name is the bundle's name)")
    exp.add_argument("--zip", action="store_true", help="also write the bundle as DIR.zip")
    exp.add_argument("--no-checkpoints", action="store_true", help="leave the torch checkpoints out of the bundle")
    exp.add_argument("--tolerance", type=float, default=1e-4, help="largest relative onnx-vs-torch difference")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def add_models_parser(sub):
    models_parser = sub.add_parser("models", help="the model store: download, list, install")
    models_parser.set_defaults(run=models, cancelled="cancelled: nothing was installed")
    models_sub = models_parser.add_subparsers(dest="action", required=True)
    download_parser = models_sub.add_parser("download", help="download the official weights and export bundles")
    download_parser.add_argument("which", nargs="?", choices=MODEL_SOURCES, default="optical")
    models_sub.add_parser("list", help="the installed bundles")
    install_parser = models_sub.add_parser("install", help="install a bundle folder or zip (offline)")
    install_parser.add_argument("bundle", help="a bundle folder, its manifest.json, or its .zip")
    install_parser.add_argument("--no-default", action="store_true", help="do not make it the default model")
    install_parser.add_argument("--overwrite", action="store_true", help="replace an installed bundle of that name")


def add_train_sar_parser(sub):
    train = sub.add_parser("train-sar", help="distil a SAR model from an optical teacher on a co-registered pair")
    train.set_defaults(run=train_sar, cancelled="cancelled: the last checkpoint is in the training folder; "
                                                      "run the same command to continue")
    train.add_argument("--optical", required=True, help="the optical raster")
    train.add_argument("--sar", required=True, help="the SAR raster of the same place (warped onto the optical grid)")
    train.add_argument("--teacher", help="optical bundle with checkpoints (default: the installed optical model)")
    train.add_argument("--out", required=True, help="training folder: checkpoint, losses, the SAR bundle")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--learning-rate", type=float, default=1e-5)
    train.add_argument("--device", default="auto", choices=DEVICES)
    train.add_argument("--polarisation", help="a polarisation (VV, VH, HH, HV) or a band number; default VV")
    train.add_argument("--seed", type=int, default=0)


PARSERS = (add_segment_parser, add_evaluate_parser, add_export_parser, add_models_parser, add_train_sar_parser)


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; any failure becomes one line (exit 1), a cancel its own line (exit 130)."""
    from .core.common.feedback import Cancelled

    try:
        return args.run(args)
    except (Cancelled, KeyboardInterrupt):
        print(args.cancelled, file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (the one place a command's failure becomes its sentence)
        if args.debug:
            traceback.print_exc()
        label = f"{args.command} {args.action}" if getattr(args, "action", None) else args.command
        print(f"{label} failed: {failure_sentence(error, 'run again with --debug for the traceback')}",
              file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segearth_qgis.cli", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in PARSERS:
        add_parser(sub)
    accept_debug_after_commands(sub)
    install_cleanup_handlers()
    return run_command(parser.parse_args(argv))


def accept_debug_after_commands(sub: argparse._SubParsersAction) -> None:
    """--debug also after a command's name (``segment a.tif b.tif --debug``), at every level of subcommands."""
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                accept_debug_after_commands(action)


if __name__ == "__main__":
    sys.exit(main())
