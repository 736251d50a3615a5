"""The PRECISION choice: fp32 everywhere, fp16 on CUDA with the torch backend only, refused elsewhere with the fix."""

import pytest

from segearth_qgis.core.runtime.loader import load_bundle
from segearth_qgis.core.runtime.sessions import DeviceUnavailable, check_precision


def test_fp32_is_the_default_and_reported(tiny_bundle):
    model = load_bundle(tiny_bundle, backend="onnx", device="cpu")
    assert model.runtime.precision == "fp32"
    assert " on cpu in fp32: " in str(model.runtime)


@pytest.mark.parametrize("backend", ["onnx", "torch", "auto"])
def test_fp16_on_the_cpu_is_refused_with_what_to_choose(tiny_bundle, backend):
    with pytest.raises(DeviceUnavailable, match="fp16 runs on a CUDA GPU only.*choose precision fp32"):
        load_bundle(tiny_bundle, backend=backend, device="cpu", precision="fp16")


def test_fp16_on_the_onnx_backend_is_refused_with_what_to_choose():
    with pytest.raises(DeviceUnavailable, match="fp16 runs on the torch backend.*Choose backend torch"):
        check_precision("fp16", "cuda", "onnx")


def test_an_unknown_precision_names_the_choices(tiny_bundle):
    with pytest.raises(ValueError, match="fp32, fp16"):
        load_bundle(tiny_bundle, precision="bf16")
    check_precision("fp16", "cuda", "torch")  # the one place fp16 runs
