"""The test suite under QGIS 3.22 on this machine: ruff first, the offline wheel folder the installer tests use,
then pytest headless in an isolated profile."""

import tempfile

from .environment import ROOT, run_in_env, say
from .qgis340 import test_qgis340
from .wheels import offline_wheels


def lint(venv):
    return run_in_env(venv, [str(venv / "bin" / "ruff"), "check", str(ROOT)])


def test(venv, pytest_args, qgis="3.22"):
    code = lint(venv)
    if code:
        say("lint failed: fix the findings above (python3 build.py lint)")
        return code
    if qgis == "3.40":
        return test_qgis340(venv, pytest_args)
    wheels = offline_wheels(venv)
    with tempfile.TemporaryDirectory(prefix="segearth-qgis-profile-") as profile:
        command = [str(venv / "bin" / "python"), "-m", "pytest", "--qgis_disable_gui", "-ra", *pytest_args]
        code = run_in_env(venv, command, {"QGIS_CUSTOM_CONFIG_PATH": profile, "SEGEARTH_TEST_WHEELS": str(wheels)})
    if code == 5:
        say("pytest collected no tests: that counts as a failure")
    return code
