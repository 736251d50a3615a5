"""Each kind of failure becomes its one sentence (core/common/failures.py)."""

import errno

import pytest

from segearth_qgis.core.common.failures import CANCELLED, OUT_OF_MEMORY, ActionableError, failure_sentence
from segearth_qgis.core.common.feedback import Cancelled
from segearth_qgis.core.runtime.sessions import DeviceUnavailable

HINT = "run again with --debug for the traceback"


@pytest.mark.parametrize("error, expected", [
    (ValueError("GBA_LAMBDA must be a finite number, got nan"), "GBA_LAMBDA must be a finite number, got nan"),
    (ActionableError("the bundle x.zip is damaged: re-download it"), "the bundle x.zip is damaged: re-download it"),
    (DeviceUnavailable("no CUDA device: use DEVICE cpu"), "no CUDA device: use DEVICE cpu"),
    (FileExistsError("the bundle exists: add --overwrite"), "the bundle exists: add --overwrite"),
    (Cancelled(), CANCELLED),
    (KeyboardInterrupt(), CANCELLED),
    (MemoryError(), OUT_OF_MEMORY),
])
def test_known_failures_keep_or_get_their_sentence(error, expected):
    assert failure_sentence(error, HINT) == expected


def test_a_missing_package_says_how_to_install_it():
    sentence = failure_sentence(ModuleNotFoundError("No module named 'onnxruntime.capi'", name="onnxruntime.capi"),
                                HINT)
    assert sentence.startswith("the Python package onnxruntime is missing: install the plugin's dependencies")
    assert "Install dependencies" in sentence and "build.py setup" in sentence


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, ("disk is full", "/out/classes.tif", "free some space")),
    (errno.EACCES, ("permission denied", "/out/classes.tif", "you can write to")),
    (errno.ENOENT, ("/out/classes.tif does not exist", "check the path")),
])
def test_system_errors_name_the_file_and_what_to_do(code, words):
    sentence = failure_sentence(OSError(code, "strerror", "/out/classes.tif"), HINT)
    assert all(word in sentence for word in words), sentence
    assert "Errno" not in sentence


def test_an_unforeseen_error_is_one_line_that_points_at_the_traceback():
    sentence = failure_sentence(KeyError("boom"), HINT)
    assert sentence == f"unexpected KeyError: 'boom'; {HINT}: please report it"
    assert "\n" not in sentence
