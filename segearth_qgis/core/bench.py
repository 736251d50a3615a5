"""Speed benchmark: the official order of operations against our torch and ONNX backends, on one seeded model."""

import os
import tempfile
import threading
import time
from pathlib import Path

from .resize import rescale_size
from .segment import window_boxes


class _PeakRss:
    """Samples this process's resident memory while a block runs (the OS peak counter never goes down)."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = 0

    @staticmethod
    def current():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        self._stop = threading.Event()
        self.peak = self.current()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ReferenceOrder:
    """Runs a torch model window by window in the official order (SimFeatUp at full width, 1x1 conv at full size)."""

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


def speed(arch="ViT-B-16", size=448, runs=1, log=print):
    from .bundle import load_bundle
    from .export import export_bundle
    from .random_model import write_random_checkpoints
    from .segment import segment_image
    from .synthetic import synthetic_scene
    from .torch_model import load_model_from_checkpoints
    from .vocabulary import Vocabulary

    vocab = Vocabulary.parse("background\nbuilding,roof\nroad\nwater,river\ntree,forest\nfield,grass")
    rgb = synthetic_scene(size, size, seed=1)
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as tmp:
        log(f"building a seeded random {arch} model and exporting its bundle (not timed) ...")
        checkpoints = write_random_checkpoints(Path(tmp) / "weights", arch=arch, quick_gelu=True, seed=0)
        export_bundle(checkpoints["clip"], checkpoints["upsampler"], checkpoints["arch"], Path(tmp) / "bundle",
                      keep_checkpoints=False, log=lambda _: None)
        torch_model = load_model_from_checkpoints(**checkpoints, device="cpu")
        onnx_model = load_bundle(Path(tmp) / "bundle", backend="onnx", device="cpu")
        candidates = [("reference_order", ReferenceOrder(torch_model), 1), ("torch", torch_model, 4),
                      ("onnx", onnx_model, 4)]
        results = {}
        for name, model, batch in candidates:
            segment_image(model, rgb[:224, :224], vocab, resize_longer_side=None, batch_size=batch)  # warm-up
            best = None
            for _ in range(runs):
                with _PeakRss() as rss:
                    start = time.perf_counter()
                    result = segment_image(model, rgb, vocab, batch_size=batch)
                    seconds = time.perf_counter() - start
                best = min(best or seconds, seconds)
            results[name] = (best, rss.peak, result.labels)
    windows = len(window_boxes(*rescale_size(size, size, 448), 224, 112))
    reference_labels = results["reference_order"][2]
    log(f"{arch}, {size}x{size} image resized to 448 on the longer side, {windows} windows of 224, "
        f"{len(vocab.queries)} queries, CPU float32; {onnx_model.runtime}")
    log(f"{'implementation':<16}{'windows/s':>11}{'s/image':>10}{'peak RSS':>11}{'labels = (a)':>14}")
    for name, (seconds, peak, labels) in results.items():
        equal = 100.0 * float((labels == reference_labels).mean())
        log(f"{name:<16}{windows / seconds:>11.2f}{seconds:>10.2f}{peak / 2 ** 30:>9.2f} GB{equal:>13.2f}%")
    base = results["reference_order"][0]
    equal = min(100.0 * float((results[n][2] == reference_labels).mean()) for n in ("torch", "onnx"))
    log(f"speed: onnx_vs_reference_order={base / results['onnx'][0]:.2f} "
        f"torch_vs_reference_order={base / results['torch'][0]:.2f} labels_equal={equal:.2f}%")
    return 0
