"""The dependency installer: where runtimes live, which package a machine gets, QGIS's pins, pip bootstrap, cancel and
failure handling, the desktop prompt, and the whole first-run story in qgis_process with interpreters that lack
onnxruntime (a fresh venv, and Debian's own python3 with a fresh runtime folder)."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from cross_version import AGREEMENT, segment_parameters
from osgeo import gdal
from qgis.PyQt.QtWidgets import QPushButton
from rasters import read_band, scene_bands, write_geotiff

from segearth_qgis.core.common.feedback import Cancelled, Feedback
from segearth_qgis.core.gis.raster import category_names
from segearth_qgis.core.setup import dependencies, installer
from tools.build.environment import ROOT
from tools.build.plugin import stage_plugin

WHEELS = os.environ.get("SEGEARTH_TEST_WHEELS")  # build.py test downloads it (offline_wheels)
needs_wheels = pytest.mark.skipif(not WHEELS, reason="python3 build.py test provides the offline wheel folder")
SYSTEM_PYTHON = "/usr/bin/python3"


class Recorder(Feedback):
    """The core Feedback, recording; ``cancel_after`` lines of log cancel the run."""

    def __init__(self, cancel_after=None):
        self.lines, self.fractions, self.cancel_after = [], [], cancel_after

    def progress(self, fraction):
        self.fractions.append(fraction)

    def cancelled(self):
        return self.cancel_after is not None and sum(line.startswith("  ") for line in self.lines) >= self.cancel_after

    def info(self, text):
        self.lines.append(text)

    warn = info


def test_runtime_folder_is_outside_the_plugin_per_profile_and_interpreter(monkeypatch, tmp_path):
    monkeypatch.delenv(dependencies.RUNTIME_DIR_ENV, raising=False)
    profile = tmp_path / "profiles" / "default"
    root = dependencies.runtime_root(profile)
    assert root == profile / "segearth-runtime" / dependencies.interpreter_tag()
    assert dependencies.interpreter_tag().startswith(f"cpython-{sys.version_info.major}{sys.version_info.minor}")
    assert not root.is_relative_to(profile / "python" / "plugins")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    windows = dependencies.runtime_home(profile)
    assert windows.parent == tmp_path / "Local" / "segearth-qgis" / "runtimes"
    assert windows.name.startswith("default-") and windows != dependencies.runtime_home(tmp_path / "other" / "default")
    monkeypatch.setenv(dependencies.RUNTIME_DIR_ENV, str(tmp_path / "shared"))
    assert dependencies.runtime_home(profile) == tmp_path / "shared"


def test_activation_never_raises_and_puts_the_active_folder_first(monkeypatch, tmp_path):
    monkeypatch.setenv(dependencies.RUNTIME_DIR_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = dependencies.runtime_root(tmp_path)
    assert dependencies.activate(tmp_path) is None                     # nothing installed
    root.mkdir(parents=True)
    (root / dependencies.STATE_FILE).write_text("{not json")
    assert dependencies.activate(tmp_path) is None                     # unreadable state
    dependencies.write_state(root, {"active": "env-gone"})
    assert dependencies.activate(tmp_path) is None                     # its folder was deleted
    dependencies.write_state(root, {"active": "../escape"})
    assert dependencies.activate(tmp_path) is None                     # never a path outside the root
    (root / "env-1").mkdir()
    dependencies.write_state(root, {"active": "env-1", "profile": "onnx"})
    assert dependencies.activate(tmp_path) == root / "env-1"
    assert sys.path[0] == str(root / "env-1")
    assert not list(root.glob(".*.tmp"))                               # the state was replaced atomically


def test_detection_finds_runtimes_without_importing_them():
    probe = subprocess.run([sys.executable, "-c", "import json, sys; from segearth_qgis.core.setup.dependencies import "
                            "detect; status = detect(); print(json.dumps([status.found, status.summary(), "
                            "[m for m in ('onnxruntime', 'torch', 'open_clip') if m in sys.modules]]))"],
                           capture_output=True, text=True, timeout=120, check=True)
    found, summary, imported = json.loads(probe.stdout)
    import onnxruntime
    import torch

    assert imported == []
    assert found["onnxruntime-gpu"][0] == onnxruntime.__version__
    assert found["torch"][0] == torch.__version__.split("+")[0]
    assert Path(found["torch"][1]) == Path(torch.__file__).resolve().parents[1]
    assert "onnxruntime-gpu 1.31.1" in summary and "open_clip_torch 3.3.0" in summary


def test_detection_survives_import_hooks_that_refuse_a_name():
    script = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Refuse())
from segearth_qgis.core.setup.dependencies import detect
status = detect()
print(sorted(status.found), status.summary())
"""
    probe = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "torch: not installed" in probe.stdout and "'onnxruntime-gpu'" in probe.stdout


def test_missing_runtime_messages_name_the_profile_and_both_ways_to_install():
    onnx = dependencies.missing_runtime_message("onnxruntime")
    assert "PROFILE onnx" in onnx and "qgis_process run segearth:install_dependencies -- PROFILE=onnx" in onnx
    assert "WHEELS=" in onnx
    assert "PROFILE=full" in dependencies.missing_runtime_message("open_clip")
    assert dependencies.profile_for("torch.nn") == "full" and dependencies.profile_for("numba") == "onnx"


@pytest.mark.parametrize("probe, gpu, package, note", [
    (installer.GpuProbe((13, 0), "580.65.06", [("NVIDIA H100", (9, 0))]), "auto", installer.ORT_GPU, "CUDA 13"),
    (installer.GpuProbe((12, 8), "570.1", [("RTX 4090", (8, 9))]), "auto", installer.ORT_CPU, "update the driver"),
    (installer.GpuProbe((13, 1), "590.1", [("Tesla V100", (7, 0))]), "auto", installer.ORT_CPU, "compute capability"),
    (installer.GpuProbe(None, "575.10", [("RTX 3060", None)]), "auto", installer.ORT_CPU, "older than 580"),
    (installer.GpuProbe(None, "581.2", [("RTX 3060", None)]), "auto", installer.ORT_GPU, "CUDA 13"),
    (installer.GpuProbe(), "auto", installer.ORT_CPU, "no NVIDIA GPU"),
    (installer.GpuProbe((13, 0), "580.65.06", [("NVIDIA H100", (9, 0))]), "cpu", installer.ORT_CPU, "asked for"),
])
def test_the_onnxruntime_package_follows_the_driver_and_the_gpu(probe, gpu, package, note):
    probe.problem = installer.gpu_problem(probe)
    plan = installer.plan_install("onnx", gpu, probe, offline=False)
    assert plan.requirements[0] == package
    assert plan.gpu == (package == installer.ORT_GPU)
    assert note in " ".join(plan.notes), plan.notes
    assert all(r in plan.requirements for r in installer.PINS["profiles"]["onnx"])
    assert not any(r.startswith("torch") for r in plan.requirements)


def test_cuda_asked_for_without_a_usable_gpu_is_refused_and_full_adds_torch(monkeypatch):
    probe = installer.GpuProbe((12, 4), "550.1", [("RTX 2080", (7, 5))])
    probe.problem = installer.gpu_problem(probe)
    with pytest.raises(installer.InstallError, match="CUDA 12.4.*update the driver"):
        installer.plan_install("onnx", "cuda", probe, offline=False)
    monkeypatch.setattr(sys, "platform", "linux")
    full = installer.plan_install("full", "auto", probe, offline=False)
    assert {r.split("==")[0] for r in full.requirements} >= {"torch", "open_clip_torch", "onnx", "onnxruntime"}
    assert full.index_arguments == ["--extra-index-url", installer.TORCH_CPU_INDEX]
    assert installer.plan_install("full", "auto", probe, offline=True).index_arguments == []
    with pytest.raises(installer.InstallError, match="PROFILE must be one of"):
        installer.plan_install("everything", "auto", probe, offline=False)


@pytest.mark.parametrize("machine, release", [("x86_64", "14.5"), ("arm64", "13.6")])
def test_intel_macs_and_macos_13_get_the_last_onnxruntime_built_for_them(monkeypatch, machine, release):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(installer.platform, "machine", lambda: machine)
    monkeypatch.setattr(installer.platform, "mac_ver", lambda: (release, ("", "", ""), machine))
    plan = installer.plan_install("onnx", "auto", installer.probe_gpu(sys.executable), offline=False)
    assert plan.requirements[0] == installer.ORT_OLD_MACOS == "onnxruntime==1.23.2"
    assert not any(r.startswith("numba") for r in plan.requirements)
    assert installer.plan_modules(plan) == ["onnxruntime", "ftfy", "regex"]
    with pytest.raises(installer.InstallError, match="no wheels for Intel Macs or macOS before 14"):
        installer.plan_install("full", "auto", None, offline=False)


def test_apple_silicon_on_macos_14_gets_the_current_packages(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(installer.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(installer.platform, "mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    plan = installer.plan_install("full", "auto", installer.probe_gpu(sys.executable), offline=False)
    assert plan.requirements[0] == installer.ORT_CPU and "numba==0.68.0" in plan.requirements
    assert plan.index_arguments == []           # macOS torch wheels carry no CUDA: no CPU index needed


def test_macos_gets_the_cpu_package_with_the_reason(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(installer.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(installer.platform, "mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    probe = installer.probe_gpu(sys.executable)
    assert "macOS has no CUDA" in probe.problem
    assert installer.plan_install("onnx", "auto", probe, offline=False).requirements[0] == installer.ORT_CPU


def test_this_machines_probe_decides_the_package_and_says_why():
    probe = installer.probe_gpu(sys.executable)
    plan = installer.plan_install("onnx", "auto", probe, offline=False)
    assert plan.requirements[0] == (installer.ORT_CPU if probe.problem else installer.ORT_GPU)
    assert (probe.problem or "NVIDIA GPU found") in " ".join(plan.notes)


def test_pins_are_the_tested_versions():
    constraints = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[name.lower().replace("_", "-")] = version.strip()
    pins = [installer.ORT_CPU, *installer.PINS["profiles"]["onnx"], *installer.PINS["profiles"]["full"]]
    for requirement in pins:
        name, version = requirement.split("==")
        name = name.split("[")[0].lower().replace("_", "-")
        assert constraints[name if name != "onnxruntime" else "onnxruntime-gpu"] == version, requirement
    assert installer.ORT_GPU.endswith("==" + installer.ORT_VERSION) and "[cuda,cudnn]" in installer.ORT_GPU


def test_constraints_pin_what_qgis_has_and_not_our_own_runtime(tmp_path):
    import numpy
    import regex
    from osgeo import gdal as loaded_gdal

    pins = installer.qgis_constraints()
    assert pins["numpy"] == numpy.__version__
    assert pins["GDAL"] == loaded_gdal.__version__
    assert pins["regex"] == regex.__version__   # imported by the tests, outside any runtime folder: kept
    site_of_regex = Path(regex.__file__).parents[1]
    assert "regex" not in installer.qgis_constraints(site_of_regex)
    # What this install is for is never pinned (an older copy loaded by another plugin must not block it).
    assert "regex" not in installer.qgis_constraints(None, ["regex==2026.11.15"])
    assert "onnxruntime-gpu" not in pins


def test_interpreter_candidates_per_platform(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "prefix", r"C:\OSGeo4W\apps\Python312")
    monkeypatch.setattr(sys, "executable", r"C:\OSGeo4W\bin\qgis-bin.exe")
    windows = [str(c) for c in installer.interpreter_candidates()]
    assert windows[0].startswith(r"C:\OSGeo4W\apps\Python312") and windows[0].endswith("python.exe")
    assert not any(c.endswith("qgis-bin.exe") for c in windows)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(sys, "prefix", "/Applications/QGIS.app/Contents/Frameworks")
    monkeypatch.setattr(sys, "executable", "/Applications/QGIS.app/Contents/MacOS/QGIS")
    mac = [str(c) for c in installer.interpreter_candidates()]
    assert "/Applications/QGIS.app/Contents/MacOS/bin/python3" in mac
    assert mac[0].startswith("/Applications/QGIS.app/Contents/Frameworks/bin/python3")


def test_the_interpreter_found_is_this_process_and_others_are_skipped(tmp_path):
    other = shutil.which("python3", path=os.environ["PATH"].replace(str(Path(sys.executable).parent), ""))
    found = installer.find_interpreter([tmp_path / "missing", other, sys.executable])
    assert found == Path(sys.executable)
    with pytest.raises(installer.InstallError, match="cannot find the Python interpreter that QGIS runs"):
        installer.find_interpreter([other])


def test_pip_diagnoses_say_what_to_do():
    damaged = installer.diagnose(["ERROR: Wheel 'onnxruntime' located at /w/onnxruntime.whl is invalid."], {})
    assert "damaged" in damaged
    missing = installer.diagnose(["ERROR: No matching distribution found for onnxruntime==1.31.1"], {})
    assert "onnxruntime==1.31.1" in missing and "pip download" in missing
    conflict = installer.diagnose(["ERROR: ResolutionImpossible: ..."], {"numpy": "1.24.2"})
    assert "numpy 1.24.2" in conflict
    assert installer.diagnose(["something else"], {}) == ""


def test_pip_run_logs_its_lines_reports_pip_phases_and_stops_at_a_cancel():
    recorder = Recorder()
    script = "print('Collecting numpy'); print(); print('Installing collected packages: numpy')"
    run = installer._PipRun([sys.executable, "-c", script], recorder.part(0.1, 0.75))
    assert run.run() == 0
    assert recorder.lines == ["  Collecting numpy", "  Installing collected packages: numpy"]
    assert recorder.fractions == pytest.approx([0.1 + 0.75 * 0.05, 0.1 + 0.75 * 0.6])
    quiet = Recorder()
    assert installer._PipRun([sys.executable, "-c", script], quiet.part(0.88, 0.0, info=False)).run() == 0
    assert quiet.lines == [] and set(quiet.fractions) == {0.88}
    stopped = Recorder(cancel_after=1)
    began = time.monotonic()
    with pytest.raises(Cancelled, match="cancelled"):
        installer._PipRun([sys.executable, "-c", "import time; print('Collecting a'); time.sleep(60)"], stopped).run()
    assert time.monotonic() - began < 30 and stopped.lines == ["  Collecting a"]


@pytest.fixture(scope="module")
def wheel_folder():
    if not WHEELS:
        pytest.skip("python3 build.py test provides the offline wheel folder")
    return Path(WHEELS)


def test_pip_is_bootstrapped_from_a_pinned_wheel_when_the_interpreter_has_none(wheel_folder, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True)
    assert installer._pip_version(bare / "bin" / "python") is None
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheel_folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(installer.PIP_WHEEL_URL_ENV, f"http://127.0.0.1:{server.server_port}/{installer.PIP_WHEEL}")
        monkeypatch.setattr(installer, "bundled_pip_folders", list)  # as if Debian's python3-pip-whl were absent
        command = installer.pip_command(bare / "bin" / "python", tmp_path / "tools")
    finally:
        server.shutdown()
    assert command == [str(bare / "bin" / "python"), str(tmp_path / "tools" / installer.PIP_WHEEL / "pip")]
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("pip " + installer.PIP_WHEEL.split("-")[1])
    # A wheel folder with pip in it needs no download at all.
    assert installer.pip_command(bare / "bin" / "python", tmp_path / "t2", wheel_folder)[1] \
        .startswith(str(wheel_folder))


def test_cancel_and_failure_keep_the_previous_runtime(wheel_folder, tmp_path):
    root = tmp_path / "runtime"
    (root / "env-previous").mkdir(parents=True)
    (root / "env-previous" / "marker.py").write_text("VALUE = 1\n")
    state = {"active": "env-previous", "profile": "onnx", "packages": {"marker": "1"}}
    dependencies.write_state(root, state)

    recorder = Recorder(cancel_after=1)
    with pytest.raises(Cancelled, match="previous runtime .*env-previous.* is still in use"):
        installer.install(root, "onnx", "cpu", wheel_folder, feedback=recorder, python=sys.executable)
    assert dependencies.read_state(root) == state
    assert sorted(p.name for p in root.iterdir()) == [".install.lock", "env-previous", dependencies.STATE_FILE]

    damaged = tmp_path / "damaged"
    shutil.copytree(wheel_folder, damaged)
    ort = next(damaged.glob("onnxruntime-*.whl"))
    ort.write_bytes(ort.read_bytes()[:100_000])     # a truncated download
    with pytest.raises(installer.InstallError, match="damaged.*previous runtime .*env-previous.* is still in use"):
        installer.install(root, "onnx", "cpu", damaged, feedback=Recorder(), python=sys.executable)
    assert dependencies.read_state(root) == state
    assert sorted(p.name for p in root.iterdir()) == [".install.lock", "env-previous", dependencies.STATE_FILE]


def test_one_install_at_a_time(tmp_path):
    root = tmp_path / "runtime"
    root.mkdir()
    with installer.install_lock(root):
        with pytest.raises(installer.InstallError, match="another install or uninstall .* is running"):
            installer.install(root, "onnx", "cpu", tmp_path, python=sys.executable)
        with pytest.raises(installer.InstallError, match="another install"):
            installer.uninstall(root)
    assert installer.uninstall(root).folder is None          # free again


def test_runtime_import_tells_a_broken_install_from_a_missing_one(qgis_app, monkeypatch):
    from qgis.core import QgsProcessingException

    from segearth_qgis.processing import base

    def broken():
        raise ImportError("DLL load failed while importing onnxruntime_pybind11_state",
                          name="onnxruntime.capi.onnxruntime_pybind11_state")

    heard = []
    monkeypatch.setattr(base, "MISSING_RUNTIME_LISTENERS", [lambda profile, message: heard.append(profile)])
    with pytest.raises(QgsProcessingException, match="onnxruntime is installed but cannot be imported .*DLL load.*"
                                                     "ACTION=repair"):
        base.runtime_import(broken)
    with pytest.raises(QgsProcessingException, match="Numba needs NumPy.*ACTION=repair"):
        base.runtime_import(lambda: (_ for _ in ()).throw(ImportError("Numba needs NumPy 2.3 or less")))
    assert heard == []                          # no install prompt: installing again would not help


def test_runtime_import_says_how_to_install_and_offers_the_prompt(qgis_app, qgis_iface, monkeypatch):
    from qgis.core import QgsProcessingException

    from segearth_qgis.processing import base

    monkeypatch.setattr(base, "_importable", lambda module: False)  # as in a QGIS without onnxruntime

    from segearth_qgis.gui.install_prompt import InstallPrompt
    from segearth_qgis.processing.base import MISSING_RUNTIME_LISTENERS, runtime_import

    def load():
        try:
            raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
        except ImportError as error:
            raise ImportError("onnxruntime is not installed") from error

    prompt = InstallPrompt(qgis_iface)
    try:
        for _ in range(2):
            with pytest.raises(QgsProcessingException, match="PROFILE=onnx"):
                runtime_import(load)
        qgis_app.processEvents()
        bar = qgis_iface.messageBar()
        item = bar.currentItem()
        assert item is not None and "onnxruntime is not installed" in item.text()
        assert item.findChild(QPushButton, "segearth_install_dependencies") is not None
        assert prompt.offered == {"onnx"}                 # offered once, however often it was needed
        bar.popWidget(item)                               # the user closes it; unloading must not fail then
        qgis_app.processEvents()
    finally:
        prompt.unload()
    assert prompt._listener not in MISSING_RUNTIME_LISTENERS


def test_the_prompt_opens_the_installer_dialog_on_the_missing_profile(qgis_app, qgis_iface, monkeypatch):
    import processing

    from segearth_qgis.gui.install_prompt import InstallPrompt

    opened = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda name, parameters: opened.append((name, parameters)),
                        raising=False)
    prompt = InstallPrompt(qgis_iface)
    try:
        prompt.offer("full", "torch is not installed in the Python that QGIS runs. Install it with ...")
        prompt.item.findChild(QPushButton, "segearth_install_dependencies").click()
    finally:
        prompt.unload()
    assert opened == [("segearth:install_dependencies", {"PROFILE": "full"})]
    assert prompt.item is None


def test_a_qgis_upgrade_of_numpy_is_noticed(monkeypatch, tmp_path):
    import numpy

    root = tmp_path / "runtime"
    (root / "env-1").mkdir(parents=True)
    dependencies.write_state(root, {"active": "env-1", "pins": {"numpy": "1.0.0", "GDAL": gdal.__version__}})
    assert dependencies.changed_since_install(root) == [("numpy", "1.0.0", numpy.__version__)]
    dependencies.write_state(root, {"active": "env-1", "pins": {"numpy": numpy.__version__}})
    assert dependencies.changed_since_install(root) == []


# The first run, in qgis_process, as a user meets it.

def qgis_environment(tmp_path, venv=None, profile="profile"):
    """qgis_process with the staged plugin, an isolated profile, and ``venv`` (or no venv: Debian's python3) as the
    interpreter; the test suite's own venv and checkout are kept out of it."""
    staged = stage_plugin(tmp_path / "plugins")
    test_venv = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != test_venv]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    first = str(venv / "bin") if venv else str(Path(SYSTEM_PYTHON).parent)  # as on a machine without pyenv
    env.update(PATH=os.pathsep.join([first, *path]), QT_QPA_PLATFORM="offscreen",
               QGIS_PLUGINPATH=str(staged.parent), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / profile))
    env.pop(dependencies.RUNTIME_DIR_ENV, None)
    enable = subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    return env


def qgis_run(env, algorithm, **parameters):
    process = subprocess.run(["qgis_process.bin", "--json", "run", algorithm, "--",
                              *(f"{k}={v}" for k, v in parameters.items())],
                             env=env, capture_output=True, text=True, timeout=600)
    try:
        results = json.loads(process.stdout)["results"] if process.returncode == 0 else None
    except ValueError:
        results = None
    return process, results


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", scene_bands(96, 128, seed=5))


@pytest.fixture()
def reference(segearth_processing, tiny_bundle, scene, tmp_path):
    """The same scene segmented in this process (the test venv's onnxruntime on the CPU): labels and class names."""
    import processing

    result = processing.run("segearth:segment", segment_parameters(scene, tiny_bundle, tmp_path / "reference"))
    return read_band(result["OUTPUT"]), class_names(result["OUTPUT"])


def class_names(path):
    dataset = gdal.Open(str(path))  # held: a band outliving its dataset crashes GDAL
    return category_names(dataset.GetRasterBand(1))


def assert_segmented(results, out, reference):
    """An onnx-backend run whose labels and class names are the reference's."""
    assert "onnx backend" in results["RUNTIME"] and "cpu" in results["RUNTIME"], results["RUNTIME"]
    labels, names = reference
    assert class_names(out) == names
    assert names[:2] == ["background", "building"]
    produced = read_band(out)
    assert produced.shape == labels.shape == (96, 128)
    assert (produced == labels).mean() >= AGREEMENT


@pytest.fixture(scope="module")
def fresh_venv_install(tmp_path_factory, wheel_folder, tiny_bundle, scene):
    """A venv from Debian's python3 with system site-packages, no pip of its own and no onnxruntime: segment before,
    the installer from the wheel folder, segment after."""
    work = tmp_path_factory.mktemp("fresh-venv")
    venv = work / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import onnxruntime"], capture_output=True)
    assert probe.returncode != 0, "the fresh venv must start without onnxruntime"
    env = qgis_environment(work, venv)
    listed = subprocess.run(["qgis_process.bin", "list"], env=env, capture_output=True, text=True, timeout=120)
    before = qgis_run(env, "segearth:segment", **segment_parameters(scene, tiny_bundle, work / "before"))
    install = qgis_run(env, "segearth:install_dependencies", WHEELS=wheel_folder)
    after = qgis_run(env, "segearth:segment", **segment_parameters(scene, tiny_bundle, work / "after"))
    return {"work": work, "venv": venv, "env": env, "listed": listed, "before": before, "install": install,
            "after": after}


@needs_wheels
def test_fresh_venv_fails_clearly_then_installs_offline_and_segments(fresh_venv_install, reference):
    run = fresh_venv_install
    assert "segearth:segment" in run["listed"].stdout and "segearth:install_dependencies" in run["listed"].stdout
    before, _ = run["before"]
    assert before.returncode != 0
    assert "onnxruntime is not installed in the Python that QGIS runs" in before.stdout + before.stderr
    assert "segearth:install_dependencies -- PROFILE=onnx" in before.stdout + before.stderr
    assert not (run["work"] / "before" / "classes.tif").exists()

    process, results = run["install"]
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    log = process.stdout + process.stderr
    assert f"QGIS's Python: {run['venv'] / 'bin' / 'python'}" in log
    import numpy

    assert "kept as QGIS has them:" in log
    assert f"numpy {numpy.__version__}" in log and f"GDAL {gdal.__version__}" in log
    root = Path(results["RUNTIME_DIR"])
    profile = run["work"] / "profile" / "profiles" / "default"
    assert root == profile / "segearth-runtime" / dependencies.interpreter_tag()
    state = dependencies.read_state(root)
    assert state["profile"] == "onnx" and state["gpu"] is False and state["packages"]["onnxruntime"] == "1.31.1"
    assert "numpy" not in state["packages"] and state["pins"]["numpy"] == numpy.__version__
    assert "onnxruntime 1.31.1 (runtime folder)" in results["STATUS"]
    assert results["RESTART_NEEDED"] is False

    process, results = run["after"]
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    assert_segmented(results, run["work"] / "after" / "classes.tif", reference)

    check = subprocess.run([str(run["venv"] / "bin" / "python"), "-c",
                            "import sys, json; from segearth_qgis.core.setup.dependencies import activate; "
                            "site = activate(sys.argv[1]); import numpy, onnxruntime; from osgeo import gdal_array; "
                            "print(json.dumps([str(site), numpy.__file__, onnxruntime.__file__, gdal_array.__file__]))",
                            str(profile)], env=dict(run["env"], PYTHONPATH=str(run["work"] / "plugins")),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    site, numpy_file, ort_file, gdal_array_file = json.loads(check.stdout)
    assert numpy_file.startswith("/usr/lib/python3/dist-packages/")       # QGIS's numpy, not a copy
    assert gdal_array_file.startswith("/usr/lib/python3/dist-packages/")
    assert ort_file.startswith(site) and Path(site).parent == root


@needs_wheels
def test_a_damaged_wheel_fails_clearly_and_the_installed_runtime_keeps_working(fresh_venv_install, tmp_path,
                                                                                 wheel_folder, tiny_bundle, scene,
                                                                                 reference):
    run = fresh_venv_install
    root = Path(run["install"][1]["RUNTIME_DIR"])
    state = dependencies.read_state(root)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as archive:
        for wheel in wheel_folder.glob("*.whl"):
            data = wheel.read_bytes()
            archive.writestr(f"wheels/{wheel.name}", data[:50_000] if wheel.name.startswith("onnxruntime") else data)
    process, _ = qgis_run(run["env"], "segearth:install_dependencies", ACTION="repair", WHEELS_ZIP=damaged)
    log = process.stdout + process.stderr
    assert process.returncode != 0
    assert "a wheel is damaged" in log and "is still in use" in log, log[-3000:]
    assert dependencies.read_state(root) == state
    assert [p.name for p in root.glob("env-*")] == [state["active"]] and not list(root.glob(".scratch-*"))
    process, results = qgis_run(run["env"], "segearth:segment", **segment_parameters(scene, tiny_bundle,
                                                                                     tmp_path / "again"))
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert_segmented(results, tmp_path / "again" / "classes.tif", reference)


@needs_wheels
def test_debian_python_with_a_fresh_runtime_folder_survives_a_plugin_reinstall(tmp_path, wheel_folder, tiny_bundle,
                                                                               scene, reference):
    env = qgis_environment(tmp_path, venv=None, profile="fresh-profile")
    wheels_zip = tmp_path / "wheels.zip"
    with zipfile.ZipFile(wheels_zip, "w") as archive:
        for wheel in wheel_folder.glob("*.whl"):
            archive.write(wheel, wheel.name)
    process, results = qgis_run(env, "segearth:install_dependencies", PROFILE="onnx", WHEELS_ZIP=wheels_zip)
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    log = process.stdout + process.stderr
    assert "QGIS's Python: /usr/bin/python3" in log
    root = Path(results["RUNTIME_DIR"])
    assert root.is_relative_to(tmp_path / "fresh-profile") and not root.is_relative_to(tmp_path / "plugins")

    shutil.rmtree(tmp_path / "plugins")                    # the plugin manager removes and reinstalls the folder
    stage_plugin(tmp_path / "plugins")
    process, results = qgis_run(env, "segearth:segment", **segment_parameters(scene, tiny_bundle, tmp_path / "out"))
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert_segmented(results, tmp_path / "out" / "classes.tif", reference)

    process, results = qgis_run(env, "segearth:install_dependencies", ACTION="uninstall")
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "onnxruntime: not installed" in results["STATUS"]
    assert not list(root.glob("env-*")) and "active" not in dependencies.read_state(root)
