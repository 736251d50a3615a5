"""The registry of temporary paths in flight and the SIGTERM/SIGHUP handlers that remove them
(core/common/signals.py)."""

import signal
import subprocess
import sys
import threading

import pytest

from segearth_qgis.core.common import signals
from segearth_qgis.core.common.files import atomic_path

POSIX = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP and signal exit statuses are POSIX only")

DIE = """import os, signal, sys
from pathlib import Path
from segearth_qgis.core.common import signals
folder, file, kept = (Path(p) for p in sys.argv[1:4])
(folder / "inner").mkdir(parents=True)
(folder / "inner" / "part.bin").write_bytes(b"x")
file.write_bytes(b"x")
kept.write_bytes(b"x")
signals.register(folder, file)
print(*map(int, signals.install_cleanup_handlers()), flush=True)
os.kill(os.getpid(), int(sys.argv[4]))
print("still alive", flush=True)
"""


@pytest.fixture()
def handlers():
    """The process's SIGTERM and SIGHUP handlers, restored after the test."""
    saved = {signum: signal.getsignal(signum) for signum in signals.CLEANUP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_path_stays_registered_until_each_registration_is_undone(tmp_path):
    path = tmp_path / "a.tif"
    with signals.in_flight(path):
        with signals.in_flight(path, tmp_path / "b.tif"):
            assert {path, tmp_path / "b.tif"} <= set(signals.registered())
        assert path in signals.registered() and tmp_path / "b.tif" not in signals.registered()
    assert path not in signals.registered()
    signals.unregister(path)  # no longer registered: ignored
    assert path not in signals.registered()


def test_atomic_path_registers_its_temporary_name_while_the_body_writes(tmp_path):
    with atomic_path(tmp_path / "out.txt") as temp:
        assert temp in signals.registered()
        temp.write_text("x")
    assert temp not in signals.registered() and (tmp_path / "out.txt").read_text() == "x"


def test_remove_registered_deletes_files_and_folders_and_skips_the_missing(tmp_path):
    folder, file, missing, kept = tmp_path / "d.partial", tmp_path / "f.partial", tmp_path / "gone", tmp_path / "k"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "x").write_text("x")
    for path in (file, kept):
        path.write_text("x")
    with signals.in_flight(folder, file, missing):
        signals.remove_registered()
    assert sorted(tmp_path.iterdir()) == [kept]


@POSIX
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_handler_removes_what_is_in_flight_and_the_process_dies_of_the_signal(tmp_path, signum):
    paths = [tmp_path / "bundle.partial", tmp_path / ".out.partial-1.tif", tmp_path / "kept.tif"]
    run = subprocess.run([sys.executable, "-c", DIE, *map(str, paths), str(int(signum))], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == -signum, run.stderr
    assert run.stdout.split() == [str(int(signal.SIGTERM)), str(int(signal.SIGHUP))]
    assert sorted(tmp_path.iterdir()) == [paths[2]]


@POSIX
def test_install_keeps_a_handler_someone_else_installed_and_is_idempotent(handlers):
    def theirs(_signum, _frame):
        pass

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, theirs)
    assert signals.install_cleanup_handlers() == [signal.SIGTERM]
    assert signals.install_cleanup_handlers() == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGHUP) is theirs


def test_install_outside_the_main_thread_does_nothing(handlers):
    before = {signum: signal.getsignal(signum) for signum in signals.CLEANUP_SIGNALS}
    result = []
    thread = threading.Thread(target=lambda: result.append(signals.install_cleanup_handlers()))
    thread.start()
    thread.join()
    assert result == [[]]
    assert {signum: signal.getsignal(signum) for signum in signals.CLEANUP_SIGNALS} == before
