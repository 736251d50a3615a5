"""Bundles: export, hashes, zips, the ONNX backend against torch, provider reporting, and a torch-free process."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from segearth_qgis.core import Vocabulary, segment_image
from segearth_qgis.core.common.feedback import CallbackFeedback
from segearth_qgis.core.runtime.bundle import BundleError, verify_bundle
from segearth_qgis.core.runtime.loader import load_bundle
from segearth_qgis.core.runtime.sessions import DeviceUnavailable, cuda_problem

VOCAB = Vocabulary.parse("background\nbuilding,roof\nroad\nwater,river")


@pytest.fixture(scope="module")
def scene():
    from tools.dev.synthetic import synthetic_scene

    return synthetic_scene(300, 410, seed=3)


def test_manifest_describes_the_model(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["modality"] == "optical"
    assert (manifest["patch_size"], manifest["window_size"], manifest["embed_dim"]) == (16, 224, 32)
    assert (manifest["attention"], manifest["last_n"], manifest["activation"]) == ("SegEarth", 1, "quick_gelu")
    assert manifest["gba_lambda"] == 0.3 and len(manifest["prompt_templates"]) == 80
    assert manifest["prompt_templates"][0] == "a bad photo of a {}."
    assert set(manifest["files"]) >= {"visual_encoder.onnx", "text_encoder.onnx", "simfeatup_kernels.onnx",
                                      "simfeatup_apply.onnx", "bpe_simple_vocab_16e6.txt.gz", "torch/clip.pt"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert max(manifest["validation"]["relative_errors"].values()) <= manifest["validation"]["tolerance"]
    for key in ("torch", "open_clip", "onnx", "onnxruntime", "opset"):
        assert key in manifest["exported_with"]


def test_onnx_backend_matches_torch_backend(tiny_bundle, scene):
    onnx_model = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    torch_model = load_bundle(tiny_bundle, backend="torch", device="cpu")
    np.testing.assert_allclose(onnx_model.text_features(VOCAB.queries), torch_model.text_features(VOCAB.queries),
                               atol=1e-5)
    a = segment_image(onnx_model, scene, VOCAB, prob_threshold=0.3)
    b = segment_image(torch_model, scene, VOCAB, prob_threshold=0.3)
    assert np.abs(a.logits - b.logits).max() < 1e-4
    assert (a.labels == b.labels).mean() >= 0.9999


def test_onnx_backend_in_whole_image_mode_and_without_numba(tiny_bundle, scene):
    from segearth_qgis.core.runtime.bundle import read_manifest
    from segearth_qgis.core.runtime.onnx_backend import OnnxModel

    torch_model = load_bundle(tiny_bundle, backend="torch", device="cpu")
    graph_only = OnnxModel(tiny_bundle, read_manifest(tiny_bundle), "cpu", use_numba=False)
    assert graph_only.apply is not None and not graph_only.compiled_upsampler
    for model in (load_bundle(tiny_bundle, backend="onnx", device="cpu"), graph_only):
        square = scene[:, :300]  # resized to 448 x 448: both sides multiples of 16, as whole-image mode needs
        a = segment_image(model, square, VOCAB, resize_longer_side=448, window=None)
        b = segment_image(torch_model, square, VOCAB, resize_longer_side=448, window=None)
        assert np.abs(a.logits - b.logits).max() < 1e-4


def test_provider_report_and_cuda_request(tiny_bundle):
    model = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    assert model.runtime.backend == "onnx" and model.runtime.device == "cpu"
    assert model.runtime.providers[0] == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in str(model.runtime)
    import onnxruntime

    problem = cuda_problem(onnxruntime)
    auto = load_bundle(tiny_bundle, backend="onnx", device="auto")
    if problem is None:
        assert load_bundle(tiny_bundle, device="cuda").runtime.providers[0] == "CUDAExecutionProvider"
        assert auto.runtime.device == "cuda"
    else:
        with pytest.raises(DeviceUnavailable, match="CUDA was requested but"):
            load_bundle(tiny_bundle, backend="onnx", device="cuda")
        assert auto.runtime.device == "cpu" and problem in auto.runtime.note


def test_sessions_and_text_features_are_cached(tiny_bundle):
    first = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    second = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    assert first.encoder is second.encoder
    assert first.text_features(["road", "tree"]) is second.text_features(["road", "tree"])


def test_copied_and_zipped_bundles_load_and_verify(tiny_bundle, tmp_path, scene):
    reference = segment_image(load_bundle(tiny_bundle, device="cpu"), scene, VOCAB)
    copy = shutil.copytree(tiny_bundle, tmp_path / "moved" / "my-bundle")
    assert verify_bundle(copy)["modality"] == "optical"
    flat_zip = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat_zip, "w") as archive:
        for path in tiny_bundle.rglob("*"):
            if path.is_file():
                archive.write(path, path.relative_to(tiny_bundle).as_posix())
    os.environ["SEGEARTH_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        for source in (copy, tiny_bundle.with_suffix(".zip"), flat_zip):
            result = segment_image(load_bundle(source, device="cpu"), scene, VOCAB)
            np.testing.assert_array_equal(result.labels, reference.labels)
    finally:
        del os.environ["SEGEARTH_CACHE_DIR"]


def test_a_changed_byte_is_named(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "tampered")
    target = copy / "simfeatup_kernels.onnx"
    original = target.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="simfeatup_kernels.onnx does not match its SHA-256"):
        load_bundle(copy)
    target.write_bytes(original)
    assert verify_bundle(copy)["modality"] == "optical"
    (copy / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="text_encoder.onnx is missing"):
        verify_bundle(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_onnx_path_runs_where_torch_cannot_be_imported(tiny_bundle, tmp_path, scene):
    expected = segment_image(load_bundle(tiny_bundle, device="cpu"), scene, VOCAB).labels
    np.save(tmp_path / "scene.npy", scene)
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'open_clip', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from segearth_qgis.core import Vocabulary, segment_image
from segearth_qgis.core import load_bundle
model = load_bundle({str(tiny_bundle)!r}, backend='auto', device='auto')
result = segment_image(model, np.load({str(tmp_path / 'scene.npy')!r}), Vocabulary.parse({VOCAB.to_text()!r}))
np.save({str(tmp_path / 'labels.npy')!r}, result.labels)
assert not any(m.split('.')[0] in ('torch', 'open_clip') for m in sys.modules)
print(model.runtime)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "onnx backend" in run.stdout and "CPUExecutionProvider" in run.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


def test_export_refuses_outputs_beyond_the_tolerance(tiny_checkpoints, tmp_path):
    from segearth_qgis.core.runtime.export import ExportError, export_bundle

    messages = []
    with pytest.raises(ExportError, match="no bundle was written"):
        export_bundle(tiny_checkpoints["clip"], None, tiny_checkpoints["arch"], tmp_path / "strict", tolerance=0.0,
                      feedback=CallbackFeedback(log=messages.append))
    assert not list(tmp_path.iterdir())
    from segearth_qgis.core.runtime.sessions import SESSIONS

    assert not any(str(tmp_path) in path for path, _ in SESSIONS._sessions)
    assert any("tolerance 0" in m and "patches_224x224" in m for m in messages)


def test_bundle_without_upsampler_or_checkpoints(tiny_checkpoints, tmp_path, scene):
    from segearth_qgis.core.runtime.export import export_bundle

    out = export_bundle(tiny_checkpoints["clip"], None, tiny_checkpoints["arch"], tmp_path / "plain",
                        keep_checkpoints=False)
    manifest = verify_bundle(out)
    assert manifest["upsampler"] is None and manifest["torch"] is None and not (out / "torch").exists()
    result = segment_image(load_bundle(out, device="cpu"), scene, VOCAB)
    assert result.labels.shape == scene.shape[:2]
    with pytest.raises(BundleError, match="without checkpoints"):
        load_bundle(out, backend="torch")


def test_tokenizer_matches_open_clip():
    from open_clip.tokenizer import default_bpe, tokenize

    from segearth_qgis.core.method.tokenizer import ClipTokenizer

    texts = ["a photo of a building.", "  Water,   RIVER!! ", "résidence & café 3rd-floor", "it's a tree's leaf",
             "x" * 400, "", "a tattoo of the parking lot."]
    np.testing.assert_array_equal(ClipTokenizer(default_bpe())(texts), tokenize(texts).numpy())


def test_vit_b16_sized_export_through_the_cli(tmp_path):
    """A ViT-B/16-sized random model exported by the CLI's `export` (run apart: dynamo export holds GBs), then the
    ONNX backend against the torch reference order on a 224 x 224 window."""
    import torch

    from segearth_qgis.core import JBUOne, SegEarthModel
    from segearth_qgis.core.method.torch_model import build_clip

    torch.manual_seed(0)
    clip, ups = build_clip("ViT-B-16", quick_gelu=True), JBUOne(512)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in ups.state_dict().items()}}, tmp_path / "ups.ckpt")
    run = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "export", "--clip", str(tmp_path / "clip.pt"),
                          "--upsampler", str(tmp_path / "ups.ckpt"), "--arch", "ViT-B-16", "--quick-gelu",
                          "--no-checkpoints", "--out", str(tmp_path / "b16")], capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "logits_224x224" in run.stdout and "bundle written" in run.stdout
    onnx_model = load_bundle(tmp_path / "b16", backend="onnx", device="cpu")
    reference = SegEarthModel(clip, ups)
    windows = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    text = reference.text_features(VOCAB.queries)
    np.testing.assert_allclose(onnx_model.text_features(VOCAB.queries), text, atol=1e-5)
    with torch.no_grad():
        expected = reference.reference_order_logits(torch.from_numpy(windows), torch.from_numpy(text), 0.3).numpy()
    ours = onnx_model.window_logits(windows, text, 0.3)
    assert np.abs(ours - expected).max() < 1e-4
    assert (ours.argmax(1) == expected.argmax(1)).mean() >= 0.9999
