"""Benchmarks that print figures: speed (the official order against our backends), where a window's time goes,
parity on CUDA, the streaming pipeline's throughput and memory.

Each measured run has its own process, so its peak RSS is its own (model loading included) and no run inherits
another's caches; the export that makes the bundle also runs apart and is not timed.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLOP_PER_WINDOW = 41.4e9  # docs/method.md §2.1: ViT-B/16 with the modified last block 16.7 GMAC, SimFeatUp ~4 GMAC
SIMFEATUP_HEAD_TARGET_S = 0.10  # issue 19: SimFeatUp and the head per window on the CPU
BATCH = {"cpu": {"reference_order": 1, "torch": 4, "onnx": 4},   # device: implementation: windows per batch
         "cuda": {"reference_order": 1, "torch": 16, "onnx": 16}}
VOCABULARY = "background\nbuilding,roof\nroad\nwater,river\ntree,forest\nfield,grass"


class ReferenceOrder:
    """Runs a torch model in the official order (SimFeatUp at full width, 1x1 conv at full resolution)."""

    def __init__(self, model):
        self.model = model
        self.patch_size, self.image_mean, self.image_std = model.patch_size, model.image_mean, model.image_std

    def text_features(self, queries):
        return self.model.text_features(queries)

    def window_logits(self, windows, text_features, gba_lambda):
        return self.model.reference_order_window_logits(windows, text_features, gba_lambda)


def _prepare(folder, arch):
    from segearth_qgis.core.runtime.export import export_bundle

    from .random_model import write_random_checkpoints

    checkpoints = write_random_checkpoints(folder / "weights", arch=arch, quick_gelu=True, seed=0)
    export_bundle(checkpoints["clip"], checkpoints["upsampler"], checkpoints["arch"], folder / "bundle",
                  keep_checkpoints=False)
    (folder / "checkpoints.json").write_text(json.dumps(checkpoints))


def _load(folder, name, device):
    """The model of one implementation, and the runtime that actually runs it."""
    from segearth_qgis.core.runtime.loader import load_bundle

    if name == "onnx":
        model = load_bundle(folder / "bundle", backend="onnx", device=device)
        return model, str(model.runtime)
    from segearth_qgis.core.method.torch_model import load_model_from_checkpoints

    model = load_model_from_checkpoints(**json.loads((folder / "checkpoints.json").read_text()), device=device)
    return (ReferenceOrder(model) if name == "reference_order" else model), f"torch {device}"


def _gpu_memory(name):
    """Peak GPU memory of this process in bytes (torch's allocator, or NVML for onnxruntime), None if unknown."""
    if name != "onnx":
        import torch

        return torch.cuda.max_memory_reserved()
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
        return used[0] if used else None
    except Exception:
        return None


def _run(folder, name, size, runs, device, longer_side):
    from segearth_qgis.core.method.segment import segment_image
    from segearth_qgis.core.method.vocabulary import Vocabulary

    from .synthetic import synthetic_scene

    model, runtime = _load(folder, name, device)
    vocab = Vocabulary.parse(VOCABULARY)
    rgb = synthetic_scene(size, size, seed=1)
    batch = BATCH[device][name]
    if device == "cuda":  # cuDNN/cuBLAS choices and the allocators settle on the first full run
        segment_image(model, rgb, vocab, resize_longer_side=longer_side, batch_size=batch)
    else:  # numba compiles on the first window
        segment_image(model, rgb[:224, :224], vocab, resize_longer_side=None, batch_size=batch)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = segment_image(model, rgb, vocab, resize_longer_side=longer_side, batch_size=batch)
        best = min(best, time.perf_counter() - start)
    np.save(folder / f"{name}.npy", result.labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": best, "peak_rss": peak, "runtime": runtime,
                      "gpu_memory": _gpu_memory(name) if device == "cuda" else None}))


def _worker(*args):
    module = __spec__.name if __spec__ else __name__  # run with -m, __name__ is "__main__"
    run = subprocess.run([sys.executable, "-m", module, "worker", *map(str, args)], capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise RuntimeError(f"benchmark step {args[0]} failed:\n{run.stderr[-3000:]}")
    return run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""


def speed(arch="ViT-B-16", size=448, runs=1, device="cpu", longer_side=448, log=print):
    """Prints the speed table; ``longer_side`` 0 keeps the image's size (more windows, for GPU throughput)."""
    from segearth_qgis.core.method.resize import rescale_size
    from segearth_qgis.core.method.vocabulary import Vocabulary
    from segearth_qgis.core.method.windows import window_boxes

    side = longer_side or size
    windows = len(window_boxes(*rescale_size(size, size, side), 224, 112))
    batches = BATCH[device]
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as tmp:
        folder = Path(tmp)
        log(f"building a seeded random {arch} model and exporting its bundle (not timed) ...")
        _worker("prepare", folder, arch)
        results = {}
        for name in batches:
            log(f"running {name} on {device} ...")
            results[name] = json.loads(_worker("run", folder, name, size, runs, device, side))
            results[name]["labels"] = np.load(folder / f"{name}.npy")
        sgemm = json.loads(_worker("sgemm", folder))["gflops"] if device == "cpu" else None
    reference = results["reference_order"]
    log(f"{arch} (seeded random weights), {size}x{size} synthetic image -> {side} on the longer side, {windows} "
        f"windows of 224, {len(Vocabulary.parse(VOCABULARY).queries)} queries, {device.upper()} float32, "
        f"best of {runs}")
    memory = f"{'GPU memory':>12}" if device == "cuda" else ""
    log(f"{'implementation':<17}{'batch':>6}{'windows/s':>11}{'s/image':>10}{'peak RSS':>11}{memory}"
        f"{'labels = (a)':>14}  runtime")
    equal = {}
    for name, result in results.items():
        equal[name] = 100.0 * float((result["labels"] == reference["labels"]).mean())
        gpu = result["gpu_memory"]
        gpu = "" if device != "cuda" else f"{'n/a' if gpu is None else f'{gpu / 2 ** 30:.2f} GB':>12}"
        log(f"{name:<17}{batches[name]:>6}{windows / result['seconds']:>11.2f}{result['seconds']:>10.2f}"
            f"{result['peak_rss'] / 2 ** 30:>9.2f} GB{gpu}{equal[name]:>13.2f}%  {result['runtime']}")
    onnx_window = results["onnx"]["seconds"] / windows
    floor = (f" onnx_s_per_window={onnx_window:.3f} floor_s_per_window={FLOP_PER_WINDOW / 1e9 / sgemm:.3f} "
             f"onnx_vs_floor={onnx_window * sgemm * 1e9 / FLOP_PER_WINDOW:.2f} sgemm_gflops={sgemm:.0f} "
             f"torch_vs_onnx={results['torch']['seconds'] / results['onnx']['seconds']:.2f}") if sgemm else ""
    log(f"speed: onnx_vs_reference_order={reference['seconds'] / results['onnx']['seconds']:.2f} "
        f"torch_vs_reference_order={reference['seconds'] / results['torch']['seconds']:.2f} "
        f"labels_equal={min(equal['onnx'], equal['torch']):.2f}%{floor}")
    return 0


def _sgemm(size=2048, runs=5):
    """float32 matrix products of ``size``: the best GFLOP/s of ``runs`` (numpy's BLAS, all its threads)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(runs))
    print(json.dumps({"gflops": 2 * size ** 3 / best / 1e9}))


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


STAGES = (  # (name, module path, attribute): the CPU path's steps, timed where window_logits calls them
    ("encoder", None, "encode_windows"),
    ("range kernel (dot, softmax, spatial)", "segearth_qgis.core.method.simfeatup_cpu", "normalised_range_kernel"),
    ("fix-up convs (onnxruntime)", None, "_correct"),
    ("stage kernels, total", "segearth_qgis.core.method.simfeatup_cpu", "stage_kernels"),
    ("bicubic x2 into the padded array", "segearth_qgis.core.method.simfeatup_cpu", "bicubic_resize_padded"),
    ("adaptive conv 11x11", "segearth_qgis.core.method.simfeatup_cpu", "adaptive_conv_channels_last"),
    ("apply stages, total", "segearth_qgis.core.method.simfeatup_cpu", "apply_stage_kernels"),
    ("cosine head", "segearth_qgis.core.method.head", "cosine_head"),
    ("head with basis, total", "segearth_qgis.core.runtime.onnx_backend", "upsampled_logits"),
)


def _timer(call, name, totals):
    """``call``, adding its wall time to ``totals[name]``."""

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return timed


def _run_stages(folder, batch, runs):
    """Per-stage seconds per window of the ONNX CPU path, each stage timed where the backend calls it."""
    import importlib

    from segearth_qgis.core.method.vocabulary import Vocabulary

    from .synthetic import synthetic_scene

    model, runtime = _load(folder, "onnx", "cpu")
    text = model.text_features(Vocabulary.parse(VOCABULARY).queries)
    totals = dict.fromkeys([name for name, _, _ in STAGES], 0.0)
    for name, module, attribute in STAGES:
        owner = model if module is None else importlib.import_module(module)
        setattr(owner, attribute, _timer(getattr(owner, attribute), name, totals))
    rgb = synthetic_scene(224, 224 * batch, seed=2)
    windows = np.stack([rgb[:, 224 * i:224 * (i + 1)] for i in range(batch)]).transpose(0, 3, 1, 2)
    windows = ((windows / 255.0 - 0.45) / 0.27).astype(np.float32)
    model.window_logits(windows, text, 0.3)  # numba compiles, onnxruntime settles
    best = None
    for _ in range(runs):
        for key in totals:
            totals[key] = 0.0
        start = time.perf_counter()
        model.window_logits(windows, text, 0.3)
        total = time.perf_counter() - start
        if best is None or total < best["window_logits"]:
            best = {**totals, "window_logits": total}
    print(json.dumps({"per_window": {k: v / batch for k, v in best.items()}, "runtime": runtime, "batch": batch}))


def stages(arch="ViT-B-16", batch=4, runs=3, log=print):
    """Prints where a window's time goes on the CPU (ONNX backend): the encoder, SimFeatUp's steps, the head."""
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as tmp:
        folder = Path(tmp)
        log(f"building a seeded random {arch} model and exporting its bundle (not timed) ...")
        _worker("prepare", folder, arch)
        result = json.loads(_worker("stages", folder, batch, runs))
        sgemm = json.loads(_worker("sgemm", folder))["gflops"]
    seconds = result["per_window"]
    log(f"{arch} (seeded random weights), {batch} windows of 224 per batch, 10 queries, CPU float32, best of {runs}; "
        f"{result['runtime']}")
    log(f"{'stage':<40}{'s/window':>10}")
    for name, value in seconds.items():
        log(f"{name:<40}{value:>10.4f}")
    upsampler_head = seconds["window_logits"] - seconds["encoder"]
    log(f"stages: encoder_s={seconds['encoder']:.3f} simfeatup_head_s={upsampler_head:.3f} "
        f"target_simfeatup_head_s={SIMFEATUP_HEAD_TARGET_S:.2f} window_s={seconds['window_logits']:.3f} "
        f"floor_s_per_window={FLOP_PER_WINDOW / 1e9 / sgemm:.3f} sgemm_gflops={sgemm:.0f}")
    return 0


def parity(arch="ViT-B-16", size=448, log=print):
    """ONNX and torch on CUDA against ONNX on the CPU, on one seeded model: logits, labels and text features; also
    PRECISION=fp16 (the torch backend under autocast) and what TF32 would change (never used)."""
    from segearth_qgis.core.method.segment import segment_image
    from segearth_qgis.core.method.vocabulary import Vocabulary
    from segearth_qgis.core.runtime import sessions as runtime

    from .synthetic import synthetic_scene

    vocab = Vocabulary.parse(VOCABULARY)
    rgb = synthetic_scene(size, size, seed=1)
    with tempfile.TemporaryDirectory(prefix="segearth-parity-") as tmp:
        folder = Path(tmp)
        log(f"building a seeded random {arch} model and exporting its bundle ...")
        _worker("prepare", folder, arch)
        baseline, _ = _load(folder, "onnx", "cpu")
        expected = segment_image(baseline, rgb, vocab)
        text = baseline.text_features(vocab.queries)
        log(f"{arch} (seeded random weights), {size}x{size} -> 448, against onnx on cpu ({baseline.runtime})")
        log(f"{'variant':<26}{'max |logit diff|':>18}{'labels equal':>14}{'max |text diff|':>17}  runtime")

        def compare(label, loaded):
            model, runtime_text = loaded
            result = segment_image(model, rgb, vocab, batch_size=16)
            logits = float(np.abs(result.logits - expected.logits).max())
            labels = 100.0 * float((result.labels == expected.labels).mean())
            text_diff = float(np.abs(model.text_features(vocab.queries) - text).max())
            log(f"{label:<26}{logits:>18.2e}{labels:>13.3f}%{text_diff:>17.2e}  {runtime_text}")

        compare("onnx cuda", _load(folder, "onnx", "cuda"))
        torch_cuda, torch_runtime = _load(folder, "torch", "cuda")
        compare("torch cuda", (torch_cuda, torch_runtime))
        compare("torch cpu", _load(folder, "torch", "cpu"))
        torch_cuda.precision = "fp16"  # what load_bundle(..., precision="fp16") sets
        compare("torch cuda, PRECISION=fp16", (torch_cuda, f"{torch_runtime} in fp16"))
        torch_cuda.precision = "fp32"
        runtime.CUDA_PROVIDER_OPTIONS["use_tf32"] = "1"
        runtime.SESSIONS.release(folder)
        try:
            compare("onnx cuda, TF32", _load(folder, "onnx", "cuda"))
        finally:
            runtime.CUDA_PROVIDER_OPTIONS["use_tf32"] = "0"
            runtime.SESSIONS.release(folder)
    return 0


OUTSIDE_MODEL_TARGET = 0.10  # issue 19: share of the pipeline's time spent outside the model (I/O, resampling)


def _prepare_throughput(folder, size):
    from .synthetic import write_scene_geotiff

    write_scene_geotiff(folder / f"scene_{size}.tif", size, size, seed=3)


def _run_throughput(folder, name, size, device):
    """The whole streaming pipeline (read, windows, write) on a ``size`` square GeoTIFF at its native resolution,
    timing the model's calls where the pipeline makes them."""
    from osgeo import gdal

    from segearth_qgis.core.method.vocabulary import Vocabulary
    from segearth_qgis.core.pipeline import SegmentOptions, SegmentOutputs, segment_raster

    model, runtime = _load(folder, name, device)
    model_seconds = {"window_logits": 0.0}
    model.window_logits = _timer(model.window_logits, "window_logits", model_seconds)
    options = SegmentOptions(vocabulary=Vocabulary.parse(VOCABULARY), batch_size=BATCH[device][name])
    warm = folder / f"warm_{size}.tif"
    gdal.Translate(str(warm), str(folder / f"scene_{size}.tif"), srcWin=[0, 0, 448, 448])
    segment_raster(model, str(warm), SegmentOutputs(str(folder / f"warm_{name}.tif")), options)  # compiles, settles
    model_seconds["window_logits"] = 0.0
    start = time.perf_counter()
    result = segment_raster(model, str(folder / f"scene_{size}.tif"),
                            SegmentOutputs(str(folder / f"classes_{name}_{size}.tif")), options)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "model_seconds": model_seconds["window_logits"], "windows": result.windows,
                      "runtime": runtime, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "gpu_memory": _gpu_memory(name) if device == "cuda" else None}))


def throughput(arch="ViT-B-16", size=4096, device="cpu", log=print):
    """Prints the streaming pipeline's windows/s, seconds per megapixel and share of time outside the model, per
    backend, on a generated ``size`` x ``size`` GeoTIFF at native resolution."""
    with tempfile.TemporaryDirectory(prefix="segearth-throughput-") as tmp:
        folder = Path(tmp)
        log(f"building a seeded random {arch} model, its bundle and a {size}x{size} GeoTIFF (not timed) ...")
        _worker("prepare", folder, arch)
        _worker("prepare-throughput", folder, size)
        results = {}
        for name in ("onnx", "torch"):
            log(f"running the pipeline with {name} on {device} ...")
            results[name] = json.loads(_worker("run-throughput", folder, name, size, device))
    megapixels = size * size / 1e6
    log(f"{arch} (seeded random weights), {size}x{size} px RGB GeoTIFF (uint8, 0.5 m) at native resolution, windows "
        f"of 224 at stride 112, {device.upper()} float32; classes written as a GeoTIFF")
    for name, result in results.items():
        outside = 1.0 - result["model_seconds"] / result["seconds"]
        gpu = result["gpu_memory"]
        gpu = f" gpu_memory_gb={gpu / 2 ** 30:.2f}" if gpu else ""
        log(f"throughput: backend={name} device={device} windows={result['windows']} "
            f"windows_per_s={result['windows'] / result['seconds']:.2f} "
            f"s_per_megapixel={result['seconds'] / megapixels:.2f} seconds={result['seconds']:.1f} "
            f"outside_model_share={outside:.3f} target_outside_share={OUTSIDE_MODEL_TARGET:.2f} "
            f"peak_rss_gb={result['peak_rss'] / 2 ** 30:.2f}{gpu}  ({result['runtime']})")
    return 0


MEMORY_SIDES = (2000, 8000, 20000)
MEMORY_TILE = 1000


def _mosaic_vrt(tile_path, side, path):
    """A ``side`` x ``side`` VRT that repeats one 0.5 m GeoTIFF tile: a large raster that costs no disk."""
    from osgeo import gdal

    tile = gdal.Open(str(tile_path))
    x0, dx, _, y0, _, dy = tile.GetGeoTransform()
    vrt = gdal.GetDriverByName("VRT").Create(str(path), side, side, 0)
    vrt.SetGeoTransform((x0, dx, 0.0, y0, 0.0, dy))
    vrt.SetProjection(tile.GetProjection())
    for band_index in range(1, 4):
        vrt.AddBand(gdal.GDT_Byte)
        sources = []
        for row in range(0, side, MEMORY_TILE):
            for col in range(0, side, MEMORY_TILE):
                width, height = min(MEMORY_TILE, side - col), min(MEMORY_TILE, side - row)
                sources.append(f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{tile_path}</SourceFilename>"
                               f"<SourceBand>{band_index}</SourceBand>"
                               f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/>"
                               f"<DstRect xOff=\"{col}\" yOff=\"{row}\" xSize=\"{width}\" ySize=\"{height}\"/>"
                               "</SimpleSource>")
        band = vrt.GetRasterBand(band_index)
        band.SetColorInterpretation(gdal.GCI_RedBand + band_index - 1)
        band.SetMetadata({f"source_{i}": xml for i, xml in enumerate(sources)}, "new_vrt_sources")
    vrt.FlushCache()
    return path


def _prepare_memory(folder):
    from .synthetic import write_scene_geotiff

    _prepare(folder, "tiny")
    write_scene_geotiff(folder / "tile.tif", MEMORY_TILE, MEMORY_TILE, seed=2, origin=(500000.0, 5600000.0))
    for side in MEMORY_SIDES:
        _mosaic_vrt(folder / "tile.tif", side, folder / f"mosaic_{side}.vrt")


def _run_memory(folder, side, resolution):
    from segearth_qgis.core.method.vocabulary import Vocabulary
    from segearth_qgis.core.pipeline import SegmentOptions, SegmentOutputs, segment_raster
    from segearth_qgis.core.runtime.loader import load_bundle

    model = load_bundle(folder / "bundle", backend="onnx", device="cpu")
    options = SegmentOptions(vocabulary=Vocabulary.parse(VOCABULARY), resolution=resolution)
    start = time.perf_counter()
    result = segment_raster(model, str(folder / f"mosaic_{side}.vrt"),
                            SegmentOutputs(str(folder / f"classes_{side}.tif")), options)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "windows": result.windows,
                      "processing": list(result.processing_size)}))


def memory(resolution=5.0, log=print):
    """Peak RSS and time of the streaming pipeline on mosaics of 2000^2, 8000^2 and 20000^2 pixels of 0.5 m,
    processed at ``resolution`` metres with the tiny random model; classes are written on the input's grid."""
    from segearth_qgis.core.method.vocabulary import Vocabulary

    with tempfile.TemporaryDirectory(prefix="segearth-memory-") as tmp:
        folder = Path(tmp)
        log("building the tiny random bundle and the mosaics (not timed) ...")
        _worker("prepare-memory", folder)
        queries = len(Vocabulary.parse(VOCABULARY).queries)
        log(f"tiny random model, onnx on cpu, {queries} queries, 0.5 m RGB VRT mosaics processed at {resolution:g} m, "
            "classes written at 0.5 m (uint8 GeoTIFF, DEFLATE); GDAL block cache held to 256 MB")
        log(f"{'input pixels':>16}{'processed':>13}{'windows':>9}{'seconds':>9}{'peak RSS':>11}")
        for side in MEMORY_SIDES:
            result = json.loads(_worker("run-memory", folder, side, resolution))
            processed = "x".join(str(v) for v in result["processing"])
            log(f"{f'{side}x{side}':>16}{processed:>13}{result['windows']:>9}{result['seconds']:>9.1f}"
                f"{result['peak_rss'] / 2 ** 30:>9.2f} GB")
    return 0


def worker(step, folder, rest):
    """One measured or preparing step in its own process (``_worker``)."""
    if step == "prepare":
        _prepare(folder, rest[0])
    elif step == "prepare-memory":
        _prepare_memory(folder)
    elif step == "run-memory":
        _run_memory(folder, int(rest[0]), float(rest[1]))
    elif step == "prepare-throughput":
        _prepare_throughput(folder, int(rest[0]))
    elif step == "run-throughput":
        _run_throughput(folder, rest[0], int(rest[1]), rest[2])
    elif step == "sgemm":
        _sgemm()
    elif step == "stages":
        _run_stages(folder, int(rest[0]), int(rest[1]))
    else:
        name, size, runs, device, longer_side = rest
        _run(folder, name, int(size), int(runs), device, int(longer_side))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="build.py bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "stages", "throughput", "parity", "memory", "worker"],
                        help="speed: the three implementations; stages: where a window's time goes on the CPU; "
                             "throughput: the streaming pipeline end to end at native resolution; "
                             "parity: CUDA against the CPU (needs a GPU); memory: the streaming pipeline on rasters "
                             "up to 20000x20000; worker: one internal step")
    parser.add_argument("--batch", type=int, default=4, help="stages: windows per batch")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the square test image (speed: 448, throughput: 4096)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per implementation (best is kept)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--resolution", type=float, default=5.0, help="memory: processing resolution in metres")
    parser.add_argument("--longer-side", type=int, default=448,
                        help="the image is resized to this longer side first, as the reference does; 0 keeps it")
    parser.add_argument("step", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.what == "worker":
        return worker(args.step[0], Path(args.step[1]), args.step[2:])
    if args.what == "parity":
        return parity(args.arch, args.size or 448)
    if args.what == "memory":
        return memory(args.resolution)
    if args.what == "stages":
        return stages(args.arch, args.batch, max(args.runs, 3))
    if args.what == "throughput":
        return throughput(args.arch, args.size or 4096, args.device)
    return speed(args.arch, args.size or 448, args.runs, args.device, args.longer_side)


if __name__ == "__main__":
    sys.exit(main())
