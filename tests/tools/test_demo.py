"""The demo's preparing step (tools/dev/demo.py): a georeferenced scene, and the smoke bundle when no model is
installed."""

import json
import os
import subprocess
import sys

from osgeo import gdal


def test_demo_prepare_writes_a_georeferenced_scene_and_picks_the_smoke_bundle(tmp_path, monkeypatch):
    env = {"SEGEARTH_MODEL_DIR": str(tmp_path / "no-models"), "SEGEARTH_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "tools.dev.demo", "prepare", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout.strip().splitlines()[-1])
    assert job["random_weights"] is True and "RANDOM" in run.stderr and "MEANINGLESS" in run.stderr
    assert (tmp_path / "cache" / "smoke-bundle-random-weights-v1" / "manifest.json").is_file()
    dataset = gdal.Open(job["input"])
    assert dataset.RasterXSize == 640 and dataset.GetSpatialRef().GetAuthorityCode(None) == "25832"
