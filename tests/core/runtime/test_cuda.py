"""CUDA against the CPU on the tiny model: runs where a GPU works, skipped with the reason elsewhere."""

import numpy as np
import pytest

from segearth_qgis.core import Vocabulary, segment_image
from segearth_qgis.core.runtime.loader import load_bundle
from tools.dev.synthetic import synthetic_scene

VOCAB = Vocabulary.parse("background\nbuilding,roof\nroad\nwater\ntree")


def _cuda_problem():
    import onnxruntime
    import torch

    from segearth_qgis.core.runtime.sessions import cuda_problem

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return cuda_problem(onnxruntime)


@pytest.fixture(scope="module")
def cuda():
    problem = _cuda_problem()
    if problem:
        pytest.skip(f"no usable GPU here ({problem}); the CPU side of the device choice is tested in test_bundle")


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(300, 260, seed=5)


def _assert_close(result, expected, text, expected_text):
    assert np.abs(result.logits - expected.logits).max() < 1e-4
    assert (result.labels == expected.labels).mean() >= 0.9999
    assert np.abs(text - expected_text).max() < 1e-4


def test_onnx_on_cuda_matches_the_cpu(cuda, tiny_bundle, scene):
    cpu = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    gpu = load_bundle(tiny_bundle, backend="onnx", device="cuda")
    assert gpu.runtime.providers[0] == "CUDAExecutionProvider" and gpu.runtime.device == "cuda"
    assert not gpu.compiled_upsampler  # SimFeatUp runs in the bundle's graphs on the GPU
    _assert_close(segment_image(gpu, scene, VOCAB, batch_size=16), segment_image(cpu, scene, VOCAB),
                  gpu.text_features(VOCAB.queries), cpu.text_features(VOCAB.queries))


def test_torch_on_cuda_matches_the_cpu(cuda, tiny_checkpoints, scene):
    from segearth_qgis.core import load_model_from_checkpoints

    cpu = load_model_from_checkpoints(**tiny_checkpoints, device="cpu")
    gpu = load_model_from_checkpoints(**tiny_checkpoints, device="cuda")
    assert gpu.device.type == "cuda"
    _assert_close(segment_image(gpu, scene, VOCAB, batch_size=16), segment_image(cpu, scene, VOCAB),
                  gpu.text_features(VOCAB.queries), cpu.text_features(VOCAB.queries))


def test_torch_fp16_on_cuda_agrees_with_fp32(cuda, tiny_bundle, scene):
    fp32 = load_bundle(tiny_bundle, backend="torch", device="cuda")
    fp16 = load_bundle(tiny_bundle, backend="auto", device="cuda", precision="fp16")
    assert fp16.runtime.backend == "torch" and fp16.runtime.precision == "fp16" and "in fp16" in str(fp16.runtime)
    half, full = segment_image(fp16, scene, VOCAB, batch_size=16), segment_image(fp32, scene, VOCAB, batch_size=16)
    assert half.logits.dtype == np.float32
    assert np.abs(half.logits - full.logits).max() < 5e-2  # half precision: the official code's own fp16 budget
    assert (half.labels == full.labels).mean() >= 0.99
