"""Across QGIS versions: a bundle exported under QGIS 3.22 segments the same under QGIS 3.40 (``build.py test --qgis
3.40`` prepares it), and the Processing path never needs torch."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from cross_version import AGREEMENT, segment_parameters
from rasters import read_band, scene_bands, write_geotiff

from tools.build.plugin import stage_plugin

WRITTEN = os.environ.get("SEGEARTH_CROSS_VERSION")  # the folder tests/cross_version.py wrote in the other environment

BLOCK_TORCH = """
import os
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
            raise ImportError(f"{name} is blocked: the ONNX path must run without torch")

sys.meta_path.insert(0, BlockTorch())
open(os.environ["BLOCK_TORCH_RAN"], "w").close()
"""


def test_bundle_exported_under_another_qgis_segments_the_same(segearth_processing, tmp_path):
    if not WRITTEN:
        pytest.skip("no cross-version reference: python3 build.py test --qgis 3.40 writes one under QGIS 3.22 and "
                    "runs this test under QGIS 3.40")
    import processing
    from qgis.core import Qgis

    written = Path(WRITTEN)
    reference = json.loads((written / "reference.json").read_text())
    assert reference["qgis"] != Qgis.QGIS_VERSION
    result = processing.run("segearth:segment",
                            segment_parameters(written / "scene.tif", written / "tiny-optical.zip", tmp_path))
    assert "onnx backend" in result["RUNTIME"], result["RUNTIME"]
    labels, expected = read_band(result["OUTPUT"]), read_band(written / "reference" / "classes.tif")
    assert labels.shape == expected.shape
    agreement = (labels == expected).mean()
    print(f"QGIS {reference['qgis']} -> {Qgis.QGIS_VERSION}: labels equal on {agreement:.4%} of the pixels")
    assert agreement >= AGREEMENT


def test_qgis_process_segments_where_torch_cannot_be_imported(tiny_bundle, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", scene_bands(96, 128, seed=12))
    blocker = tmp_path / "block_torch.py"
    blocker.write_text(BLOCK_TORCH)
    staged = stage_plugin(tmp_path / "plugins")
    env = dict(os.environ, QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PYQGIS_STARTUP=str(blocker), BLOCK_TORCH_RAN=str(tmp_path / "blocker-ran"))
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    parameters = segment_parameters(scene, tiny_bundle, tmp_path / "out")
    parameters["BACKEND"] = "auto"
    process = subprocess.run(["qgis_process.bin", "--json", "run", "segearth:segment", "--",
                              *(f"{k}={v}" for k, v in parameters.items())],
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert (tmp_path / "blocker-ran").exists()
    runtime = json.loads(process.stdout)["results"]["RUNTIME"]
    assert "onnx backend" in runtime, runtime
