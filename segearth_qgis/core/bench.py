"""Speed benchmark: the official order of operations against our torch and ONNX backends, on one seeded model.

Each implementation runs in its own process, so its peak RSS is its own (model loading included) and no run
inherits another's caches; the export that makes the bundle also runs apart and is not timed.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMPLEMENTATIONS = {"reference_order": 1, "torch": 4, "onnx": 4}  # name: windows per batch
VOCABULARY = "background\nbuilding,roof\nroad\nwater,river\ntree,forest\nfield,grass"


class ReferenceOrder:
    """Runs a torch model in the official order (SimFeatUp at full width, 1x1 conv at full resolution)."""

    def __init__(self, model):
        self.model = model
        self.patch_size, self.image_mean, self.image_std = model.patch_size, model.image_mean, model.image_std

    def text_features(self, queries):
        return self.model.text_features(queries)

    def window_logits(self, windows, text_features, gba_lambda):
        import torch

        with torch.inference_mode():
            return self.model.reference_order_logits(torch.from_numpy(windows), torch.from_numpy(text_features),
                                                     gba_lambda).numpy()


def _prepare(folder, arch):
    from .export import export_bundle
    from .random_model import write_random_checkpoints

    checkpoints = write_random_checkpoints(folder / "weights", arch=arch, quick_gelu=True, seed=0)
    export_bundle(checkpoints["clip"], checkpoints["upsampler"], checkpoints["arch"], folder / "bundle",
                  keep_checkpoints=False, log=lambda _: None)
    (folder / "checkpoints.json").write_text(json.dumps(checkpoints))


def _run(folder, name, size, runs):
    from .bundle import load_bundle
    from .segment import segment_image
    from .synthetic import synthetic_scene
    from .vocabulary import Vocabulary

    if name == "onnx":
        model = load_bundle(folder / "bundle", backend="onnx", device="cpu")
        runtime = str(model.runtime)
    else:
        from .torch_model import load_model_from_checkpoints

        model = load_model_from_checkpoints(**json.loads((folder / "checkpoints.json").read_text()), device="cpu")
        runtime = "torch on cpu"
        if name == "reference_order":
            model = ReferenceOrder(model)
    vocab = Vocabulary.parse(VOCABULARY)
    rgb = synthetic_scene(size, size, seed=1)
    batch = IMPLEMENTATIONS[name]
    segment_image(model, rgb[:224, :224], vocab, resize_longer_side=None, batch_size=batch)  # warm-up, compiles
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = segment_image(model, rgb, vocab, batch_size=batch)
        best = min(best, time.perf_counter() - start)
    np.save(folder / f"{name}.npy", result.labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": best, "peak_rss": peak, "runtime": runtime}))


def _worker(*args):
    run = subprocess.run([sys.executable, "-m", __name__, *map(str, args)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"benchmark step {args[0]} failed:\n{run.stderr[-3000:]}")
    return run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""


def speed(arch="ViT-B-16", size=448, runs=1, log=print):
    from .resize import rescale_size
    from .segment import window_boxes
    from .vocabulary import Vocabulary

    windows = len(window_boxes(*rescale_size(size, size, 448), 224, 112))
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as tmp:
        folder = Path(tmp)
        log(f"building a seeded random {arch} model and exporting its bundle (not timed) ...")
        _worker("prepare", folder, arch)
        results = {}
        for name in IMPLEMENTATIONS:
            log(f"running {name} ...")
            results[name] = json.loads(_worker("run", folder, name, size, runs))
            results[name]["labels"] = np.load(folder / f"{name}.npy")
    reference = results["reference_order"]
    log(f"{arch} (seeded random weights), {size}x{size} synthetic image -> 448 on the longer side, {windows} windows "
        f"of 224, {len(Vocabulary.parse(VOCABULARY).queries)} queries, CPU float32, best of {runs}")
    header = f"{'implementation':<17}{'batch':>6}{'windows/s':>11}{'s/image':>10}{'peak RSS':>11}{'labels = (a)':>14}"
    log(f"{header}  runtime")
    equal = {}
    for name, result in results.items():
        equal[name] = 100.0 * float((result["labels"] == reference["labels"]).mean())
        log(f"{name:<17}{IMPLEMENTATIONS[name]:>6}{windows / result['seconds']:>11.2f}{result['seconds']:>10.2f}"
            f"{result['peak_rss'] / 2 ** 30:>9.2f} GB{equal[name]:>13.2f}%  {result['runtime']}")
    log(f"speed: onnx_vs_reference_order={reference['seconds'] / results['onnx']['seconds']:.2f} "
        f"torch_vs_reference_order={reference['seconds'] / results['torch']['seconds']:.2f} "
        f"labels_equal={min(equal['onnx'], equal['torch']):.2f}%")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="internal worker of the speed benchmark")
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        _prepare(args.folder, args.rest[0])
    else:
        _run(args.folder, args.rest[0], int(args.rest[1]), int(args.rest[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
