"""AlignEarth-style distillation of a SAR student from a frozen optical CLIP on co-registered raster pairs.

The official training code is unpublished (docs/method.md §3.1-3.3); the losses follow the method figure and the rest is
our documented choice:

- The student starts as a copy of the teacher's visual tower; only the student is trained, the teacher is frozen.
- Inputs: windows at the same place of the optical raster (the optical 8-bit stretch) and of the SAR raster (one
  polarisation, dB stretch, replicated to 3 channels), both CLIP-normalised as at inference.
- Losses, weights 1:1:1 by default:
  * CLS contrastive: symmetric InfoNCE over the batch between the student's and the teacher's image embeddings
    (L2-normalised, temperature 0.07);
  * CLS distillation: 1 - cosine between the same embeddings;
  * patch distillation: 1 - cosine per patch between the student's patch features under the SAR inference settings
    (SCLIP on the last 2 blocks) and the teacher's under its own settings (those its bundle runs).
- AdamW (weight decay 0.05), linear warm-up over 5 % of the steps, then cosine decay to 0; float32.
- The bottom rows of the grid (a fifth, at least one window) are held out: the agreement between student and teacher
  there (mean CLS and patch cosine) is reported before and after training.
"""

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from osgeo import gdal

from ..common.feedback import Cancelled, Feedback, as_feedback
from ..common.files import sha256_file
from ..gis.raster import COMPLEX_TYPES, RasterInputError, dataset_grid, open_raster
from ..gis.source import ProcessingSource
from ..method.windows import normalize

if TYPE_CHECKING:
    import torch

    from ..method.torch_model import SegEarthModel

CHECKPOINT = "checkpoint.pt"
STUDENT_CLIP = "student_clip.pt"
HISTORY = "losses.csv"
SAR_ATTENTION = "SCLIP"
SAR_LAST_N = 2


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 1e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    temperature: float = 0.07
    loss_weights: tuple = (1.0, 1.0, 1.0)    # CLS contrastive, CLS distillation, patch distillation
    window: int = 224
    checkpoint_every: int = 100
    holdout_windows: int = 16
    seed: int = 0
    device: str = "auto"
    polarisation: str | None = None


@dataclass
class Teacher:
    """The frozen optical model: open_clip checkpoints and the settings its bundle runs."""

    clip: str
    upsampler: str | None
    arch: str
    quick_gelu: bool = True
    attention: str = "SegEarth"
    last_n: int = 1
    gba_lambda: float = 0.3

    def fingerprint(self) -> str:
        """The SHA-256 of the CLIP checkpoint: a checkpoint of another teacher is not resumed."""
        return sha256_file(self.clip)


def teacher_from_bundle(path: Path | str) -> Teacher:
    """The teacher of an optical bundle folder or zip exported with its checkpoints."""
    from ..runtime import bundle as bundle_files

    folder = bundle_files.resolve_bundle(path)
    manifest = bundle_files.verify_bundle(folder)
    files = manifest.get("torch")
    if not files:
        raise RasterInputError(f"the teacher bundle {folder.name} has no torch checkpoints: export it again without "
                               "--no-checkpoints, or give the CLIP checkpoint and its architecture")
    if manifest["modality"] != "optical":
        raise RasterInputError(f"the teacher must be an optical model; {folder.name} is a {manifest['modality']} one")
    return Teacher(str(folder / files["clip"]), str(folder / files["upsampler"]) if files.get("upsampler") else None,
                   str(folder / files["arch"]), manifest["activation"] == "quick_gelu", manifest["attention"],
                   manifest["last_n"], manifest["gba_lambda"])


@dataclass
class TrainResult:
    steps_done: int
    resumed_from: int
    device: str
    holdout_before: dict              # {"cls": mean cosine, "patch": mean cosine}
    holdout_after: dict
    last_losses: dict
    bundle: str | None = None
    checkpoint: str | None = None
    notes: list = field(default_factory=list)


class PairedWindows:
    """Window pairs at the same pixels of the optical and the SAR raster, on the optical raster's grid."""

    def __init__(self, optical_path: Path | str, sar_path: Path | str, window: int,
                 polarisation: str | None = None) -> None:
        self.notes = []
        self._vsimem = None
        sar_path = self._on_optical_grid(str(optical_path), str(sar_path))
        self.optical = ProcessingSource(optical_path)
        self.sar = ProcessingSource(sar_path, sensor="sar", polarisation=polarisation)
        self.notes += self.sar.notes
        self.window = window
        height, width = self.optical.grid.height, self.optical.grid.width
        holdout = max(window, height // 5)
        if width < window or height < window + holdout:
            raise RasterInputError(f"the rasters are {width} x {height} px: training needs at least {window} px wide "
                                   f"and {window + holdout} px high (windows of {window} px plus a held-out strip)")
        self.train_rows = (0, height - holdout - window)      # window tops
        self.holdout_rows = (height - holdout, height - window)

    def _on_optical_grid(self, optical_path: str, sar_path: str) -> str:
        dataset = open_raster(sar_path)
        optical = dataset_grid(open_raster(optical_path))
        if optical == dataset_grid(dataset):
            return sar_path
        if any(dataset.GetRasterBand(i).DataType in COMPLEX_TYPES for i in range(1, dataset.RasterCount + 1)):
            raise RasterInputError("the SAR raster is complex and not on the optical raster's grid: convert it to "
                                   "intensity (or dB) and co-register it first")
        self._vsimem = f"/vsimem/segearth-sar-on-optical-{os.getpid()}-{id(self)}.vrt"
        gdal.Warp(self._vsimem, dataset, format="VRT", dstSRS=optical.srs_wkt, width=optical.width,
                  height=optical.height, outputBounds=optical.extent, resampleAlg="bilinear")
        self.notes.append("the SAR raster was warped onto the optical raster's grid (bilinear, GDAL)")
        return self._vsimem

    def pair(self, top: int, left: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(optical rgb, sar rgb) uint8 windows, or None when either has a nodata pixel there."""
        bottom, right = top + self.window, left + self.window
        optical, optical_valid = self.optical.read(top, bottom, left, right)
        sar, sar_valid = self.sar.read(top, bottom, left, right)
        if not (optical_valid.all() and sar_valid.all()):
            return None
        return optical, sar

    def sample(self, rng: np.random.Generator, count: int, rows: tuple[int, int],
               attempts: int = 50) -> list[tuple[np.ndarray, np.ndarray]]:
        """``count`` valid pairs at random places with tops in ``rows``; an error when nodata leaves too few."""
        pairs = []
        width = self.optical.grid.width
        for _ in range(count * attempts):
            top = int(rng.integers(rows[0], rows[1] + 1))
            left = int(rng.integers(0, width - self.window + 1))
            pair = self.pair(top, left)
            if pair is not None:
                pairs.append(pair)
                if len(pairs) == count:
                    return pairs
        raise RasterInputError(f"found only {len(pairs)} of {count} windows without nodata in both rasters after "
                               f"{count * attempts} tries: check that they overlap and share valid pixels")

    def close(self) -> None:
        self.optical.close()
        self.sar.close()
        if self._vsimem:
            gdal.Unlink(self._vsimem)


def _batch(pairs: list[tuple[np.ndarray, np.ndarray]], mean: tuple, std: tuple,
           device: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(optical, sar) CLIP-normalised tensors of a list of window pairs, on ``device``."""
    import torch

    optical = np.stack([normalize(o, mean, std) for o, _ in pairs])
    sar = np.stack([normalize(s, mean, std) for _, s in pairs])
    return torch.from_numpy(optical).to(device), torch.from_numpy(sar).to(device)


def alignment_losses(student: tuple["torch.Tensor", "torch.Tensor"], teacher: tuple["torch.Tensor", "torch.Tensor"],
                     temperature: float) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(contrastive, cls distillation, patch distillation) from (image embedding, patches) pairs."""
    import torch

    functional = torch.nn.functional
    s_cls, s_patch = student
    t_cls, t_patch = teacher
    s_norm, t_norm = functional.normalize(s_cls, dim=-1), functional.normalize(t_cls, dim=-1)
    logits = s_norm @ t_norm.T / temperature
    target = torch.arange(len(logits), device=logits.device)
    contrastive = (functional.cross_entropy(logits, target) + functional.cross_entropy(logits.T, target)) / 2
    cls_distill = 1 - (s_norm * t_norm).sum(-1).mean()
    patch_distill = 1 - functional.cosine_similarity(s_patch, t_patch, dim=1).mean()
    return contrastive, cls_distill, patch_distill


def learning_rate_factor(step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine decay to 0 (step counts from 0)."""
    warmup = max(1, int(round(steps * warmup_fraction)))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _features(model: "SegEarthModel", x: "torch.Tensor", grad: bool) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(image embedding, patch features) of a batch, with or without gradients."""
    import torch

    with torch.set_grad_enabled(grad):
        _, patches, embedding = model.encode_windows(x, with_image_embedding=True)
    return embedding, patches


def _agreement(student: "SegEarthModel", teacher_model: "SegEarthModel",
               batches: list[tuple["torch.Tensor", "torch.Tensor"]]) -> dict:
    """Mean CLS and patch cosine between the student on SAR and the teacher on optical windows."""
    import torch

    cls, patch = [], []
    for optical, sar in batches:
        s_cls, s_patch = _features(student, sar, False)
        t_cls, t_patch = _features(teacher_model, optical, False)
        cls.append(torch.nn.functional.cosine_similarity(s_cls, t_cls, dim=-1).mean().item())
        patch.append(torch.nn.functional.cosine_similarity(s_patch, t_patch, dim=1).mean().item())
    return {"cls": float(np.mean(cls)), "patch": float(np.mean(patch))}


def _save_atomically(payload: object, path: Path) -> None:
    import torch

    partial = path.with_name(f".{path.name}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


@dataclass
class _TrainingRun:
    """What the steps of one training share: the frozen teacher, the student and its optimiser, the sampling rng
    and where the checkpoint and the loss history go."""

    settings: TrainSettings
    teacher: Teacher
    out_dir: Path
    device: str
    teacher_model: "SegEarthModel"
    student: "SegEarthModel"
    optimizer: "torch.optim.Optimizer"
    schedule: "torch.optim.lr_scheduler.LambdaLR"
    run_key: dict                     # what a checkpoint must match to be resumed
    rng: np.random.Generator
    start: int = 0                    # the step training starts from (0, or the checkpoint's)
    holdout_before: dict | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    @property
    def history(self) -> Path:
        return self.out_dir / HISTORY

    def save(self, step: int) -> None:
        """Checkpoint the run after ``step`` steps."""
        _save_atomically({"run": self.run_key, "step": step, "settings": asdict(self.settings),
                          "holdout_before": self.holdout_before,
                          "student_visual": self.student.clip.visual.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                          "rng": self.rng.bit_generator.state}, self.checkpoint_path)


def _training_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from ..runtime.sessions import DeviceUnavailable

        raise DeviceUnavailable("CUDA was requested but torch sees no usable CUDA GPU: choose device cpu or auto")
    return requested


def _prepare(optical_path: Path | str, sar_path: Path | str, teacher: Teacher | Path | str, out_dir: Path | str,
             settings: TrainSettings, feedback: Feedback) -> _TrainingRun:
    """The frozen teacher, the student (a copy of its visual tower, the only part trained), AdamW and its schedule,
    and the output folder."""
    import torch

    from ..method.torch_model import SegEarthModel, load_model_from_checkpoints

    teacher = teacher if isinstance(teacher, Teacher) else teacher_from_bundle(teacher)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _training_device(settings.device)
    feedback.info(f"training on {device} (torch {torch.__version__})")
    torch.manual_seed(settings.seed)
    teacher_model = load_model_from_checkpoints(teacher.clip, None, teacher.arch, teacher.quick_gelu,
                                                teacher.attention, teacher.last_n, device)
    for parameter in teacher_model.parameters():
        parameter.requires_grad_(False)
    student = SegEarthModel(copy.deepcopy(teacher_model.clip), None, SAR_ATTENTION, SAR_LAST_N, device)
    student.clip.requires_grad_(False)
    student.clip.visual.requires_grad_(True)
    trainable = list(student.clip.visual.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, settings.steps, settings.warmup_fraction))
    run_key = {"teacher": teacher.fingerprint(), "optical": str(optical_path), "sar": str(sar_path),
               "window": settings.window, "polarisation": settings.polarisation}
    return _TrainingRun(settings, teacher, out_dir, device, teacher_model, student, optimizer, schedule, run_key,
                        np.random.default_rng(settings.seed))


def _resume(run: _TrainingRun, feedback: Feedback) -> None:
    """Continue from the folder's checkpoint, if it has one: the student, the optimiser, the schedule, the rng."""
    import torch

    if not run.checkpoint_path.is_file():
        return
    state = torch.load(run.checkpoint_path, map_location=run.device, weights_only=True)
    if state["run"] != run.run_key:
        raise RasterInputError(f"{run.checkpoint_path} belongs to another run (other rasters, teacher, window or "
                               "polarisation): choose an empty output folder, or remove it to start again")
    run.student.clip.visual.load_state_dict(state["student_visual"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    run.rng.bit_generator.state = state["rng"]
    run.start = state["step"]
    run.holdout_before = state["holdout_before"]
    feedback.info(f"resuming from step {run.start} ({run.checkpoint_path})")


def _held_out(run: _TrainingRun, data: PairedWindows,
              feedback: Feedback) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """The held-out batches; the agreement on them before training is measured unless the checkpoint has it."""
    settings = run.settings
    for note in data.notes:
        feedback.info(note)
    mean, std = run.teacher_model.image_mean, run.teacher_model.image_std
    pairs = data.sample(np.random.default_rng(settings.seed + 1), settings.holdout_windows, data.holdout_rows)
    holdout = [_batch(pairs[i:i + settings.batch_size], mean, std, run.device)
               for i in range(0, len(pairs), settings.batch_size)]
    if run.holdout_before is None:
        run.holdout_before = before = _agreement(run.student, run.teacher_model, holdout)
        feedback.info(f"held-out agreement at the start: CLS cosine {before['cls']:.4f}, patch cosine "
                      f"{before['patch']:.4f}")
    return holdout


def _open_history(run: _TrainingRun) -> None:
    """Start losses.csv with its header, unless a resumed run appends to it."""
    if run.start == 0 or not run.history.is_file():
        run.history.write_text("step,learning_rate,contrastive,cls_distill,patch_distill,total\n")


def _train_step(run: _TrainingRun, data: PairedWindows) -> dict:
    """One optimiser step on a fresh batch of training windows; the losses as floats."""
    settings = run.settings
    mean, std = run.teacher_model.image_mean, run.teacher_model.image_std
    optical, sar = _batch(data.sample(run.rng, settings.batch_size, data.train_rows), mean, std, run.device)
    target = _features(run.teacher_model, optical, False)
    parts = alignment_losses(_features(run.student, sar, True), target, settings.temperature)
    total = sum(w * p for w, p in zip(settings.loss_weights, parts, strict=True))
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    run.optimizer.step()
    run.schedule.step()
    return {"contrastive": parts[0].item(), "cls_distill": parts[1].item(), "patch_distill": parts[2].item(),
            "total": total.item()}


def _record_step(run: _TrainingRun, step: int, losses: dict, started: float, feedback: Feedback) -> None:
    """After step ``step``: its row in losses.csv, the periodic checkpoint and log line, the progress."""
    settings = run.settings
    with run.history.open("a") as f:
        f.write(f"{step + 1},{run.optimizer.param_groups[0]['lr']:.3e},{losses['contrastive']:.6f},"
                f"{losses['cls_distill']:.6f},{losses['patch_distill']:.6f},{losses['total']:.6f}\n")
    if (step + 1) % settings.checkpoint_every == 0:
        run.save(step + 1)
    if (step + 1) % max(1, settings.steps // 20) == 0 or step + 1 == settings.steps:
        rate = (step + 1 - run.start) / (time.perf_counter() - started)
        feedback.info(f"step {step + 1}/{settings.steps}: loss {losses['total']:.4f} (contrastive "
                      f"{losses['contrastive']:.4f}, CLS {losses['cls_distill']:.4f}, patch "
                      f"{losses['patch_distill']:.4f}), {rate:.2f} steps/s")
    feedback.progress((step + 1) / settings.steps)


def _finish(run: _TrainingRun, holdout: list[tuple["torch.Tensor", "torch.Tensor"]], losses: dict,
            data: PairedWindows, feedback: Feedback) -> TrainResult:
    """The last checkpoint and the held-out agreement after training."""
    steps_done = max(run.start, run.settings.steps)
    run.save(steps_done)
    after = _agreement(run.student, run.teacher_model, holdout)
    feedback.info(f"held-out agreement after {steps_done} steps: CLS cosine {after['cls']:.4f}, patch cosine "
                  f"{after['patch']:.4f}")
    return TrainResult(steps_done, run.start, run.device, run.holdout_before, after, losses,
                       checkpoint=str(run.checkpoint_path), notes=list(data.notes))


def train_sar_student(optical_path: Path | str, sar_path: Path | str, teacher: Teacher | Path | str,
                      out_dir: Path | str, settings: TrainSettings | None = None, feedback: Feedback | None = None,
                      export: bool = True) -> TrainResult:
    """Train (or resume) a SAR student in ``out_dir`` and write a SAR bundle there; returns a ``TrainResult``.

    ``teacher``: a ``Teacher`` or an optical bundle path. ``feedback``: a ``Feedback`` (progress, cancel,
    log). A checkpoint is written every ``checkpoint_every`` steps, at the end and on cancel (then ``Cancelled`` is
    raised); a later call with the same folder continues from it.
    """
    settings = settings or TrainSettings()
    feedback = as_feedback(feedback)
    run = _prepare(optical_path, sar_path, teacher, out_dir, settings, feedback)
    _resume(run, feedback)
    data = PairedWindows(optical_path, sar_path, settings.window, settings.polarisation)
    try:
        holdout = _held_out(run, data, feedback)
        _open_history(run)
        losses = {}
        started = time.perf_counter()
        for step in range(run.start, settings.steps):
            if feedback.cancelled():
                run.save(step)
                feedback.info(f"cancelled at step {step}: the checkpoint {run.checkpoint_path} holds it; run again "
                              "to continue")
                raise Cancelled()
            losses = _train_step(run, data)
            _record_step(run, step, losses, started, feedback)
        result = _finish(run, holdout, losses, data, feedback)
    finally:
        data.close()
    if export:
        result.bundle = str(_export(run.student, run.teacher, run.out_dir, settings, result, feedback))
    return result


def _export(student: "SegEarthModel", teacher: Teacher, out_dir: Path, settings: TrainSettings, result: TrainResult,
            feedback: Feedback) -> Path:
    """The student's visual tower with the teacher's text tower, as a validated SAR bundle (replaced if present)."""
    from ..runtime.export import export_bundle

    state = {k: v.detach().cpu() for k, v in student.clip.state_dict().items()}
    clip_path = out_dir / STUDENT_CLIP
    _save_atomically(state, clip_path)
    source = {"clip": {"name": "SAR student distilled by segearth:train_sar_student", "file": STUDENT_CLIP,
                       "teacher": Path(teacher.clip).name, "steps": result.steps_done,
                       "holdout_agreement": {"before": result.holdout_before, "after": result.holdout_after},
                       "settings": {k: v for k, v in asdict(settings).items() if k != "device"}},
              "upsampler": {"file": Path(teacher.upsampler).name} if teacher.upsampler else None}
    feedback.info("exporting the SAR bundle (student visual tower, teacher text tower, teacher SimFeatUp)")
    target = out_dir / f"sar-student-{out_dir.resolve().name}"
    bundle = export_bundle(str(clip_path), teacher.upsampler, teacher.arch, target,
                           quick_gelu=teacher.quick_gelu, attention=SAR_ATTENTION, last_n=SAR_LAST_N, modality="sar",
                           gba_lambda=teacher.gba_lambda, window=settings.window, source=source, overwrite=True,
                           feedback=feedback)
    (out_dir / "training.json").write_text(json.dumps({**asdict(result), "bundle": str(bundle)}, indent=1))
    return bundle
