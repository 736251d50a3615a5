"""The main job: segearth:segment through qgis_process.bin on a generated GeoTIFF, between the two steps of
tools/dev/demo.py that run in the venv."""

import json
import subprocess

from .environment import ROOT, SetupError, project_env, say
from .plugin import qgis_env

DEMO_OUT = ROOT / "out" / "demo"


def demo(venv):
    """The main job: segearth:segment through qgis_process.bin on a generated GeoTIFF, then a PNG preview."""
    python = str(venv / "bin" / "python")
    prepared = subprocess.run([python, "-m", "tools.dev.demo", "prepare", "--out", str(DEMO_OUT)],
                              env=project_env(venv), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if prepared.returncode:
        return prepared.returncode
    job = json.loads(prepared.stdout.strip().splitlines()[-1])
    for stale in DEMO_OUT.glob("classes.*"):
        stale.unlink()
    try:
        env = qgis_env(venv, ROOT / "out" / "qgis")
    except SetupError as error:
        say(str(error))
        return 1
    parameters = {"INPUT": job["input"], "CLASSES": job["classes"], "MODEL": job["model"], "DEVICE": "auto",
                  "OUTPUT": DEMO_OUT / "classes.tif", "OUTPUT_VECTOR": DEMO_OUT / "classes.gpkg",
                  "OUTPUT_AREAS": DEMO_OUT / "areas.csv"}
    say("qgis_process.bin run segearth:segment " + " ".join(f"--{k}={v!r}" for k, v in parameters.items()))
    code = subprocess.run(["qgis_process.bin", "run", "segearth:segment", "--",
                           *(f"{k}={v}" for k, v in parameters.items())], env=env, cwd=ROOT).returncode
    if code:
        say(f"qgis_process.bin exited with {code}")
        return code
    preview = [python, "-m", "tools.dev.demo", "preview", "--out", str(DEMO_OUT)]
    return subprocess.run(preview + (["--random-weights"] if job["random_weights"] else []),
                          env=project_env(venv), cwd=ROOT).returncode
