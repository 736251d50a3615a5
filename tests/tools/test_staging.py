"""Two build.py commands that stage the plugin at once: the second waits for the first instead of failing."""

import fcntl
import os
import subprocess
import sys

from tools.build.environment import ROOT

STAGE = ("import sys\nfrom tools.build.plugin import stage_plugin\n"
         "stage_plugin(sys.argv[1])\nprint('staged', flush=True)\n")
WAITING = "[build] waiting for another build.py command to finish staging ...\n"


def expected_files():
    """The staged tree's files, relative to its segearth_qgis/ folder."""
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "segearth_qgis").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    files = {name.removeprefix("segearth_qgis/") for name in files}
    files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "resources").rglob("*") if p.is_file()}
    return files | {"metadata.txt"} | {name for name in ("LICENSE", "NOTICE") if (ROOT / name).is_file()}


def test_two_concurrent_stagings_wait_for_each_other_and_both_succeed(tmp_path):
    cache = tmp_path / "cache" / "segearth-qgis"
    cache.mkdir(parents=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    destination = tmp_path / "plugins"
    with open(cache / "stage.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a staging in progress: both commands must wait for it
        commands = [subprocess.Popen([sys.executable, "-c", STAGE, str(destination)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for command in commands:
            assert command.stdout.readline() == WAITING
    outputs = [command.communicate(timeout=120) for command in commands]
    for command, (stdout, stderr) in zip(commands, outputs, strict=True):
        assert command.returncode == 0, stderr
        assert stdout == "staged\n"
    target = destination / "segearth_qgis"
    staged = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert staged == expected_files()
