"""The command-line segment (core only, no qgis import)."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from osgeo import gdal
from rasters import scene_bands, write_geotiff

NO_QGIS = """import sys
from segearth_qgis.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] == "qgis"], "the command-line segment imported qgis"
sys.exit(code)
"""


def test_segment_command_writes_classes_and_polygons_without_qgis(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(120, 180, seed=11))
    run = subprocess.run([sys.executable, "-c", NO_QGIS, "segment", source,
                          str(tmp_path / "classes.tif"), "--classes", "building,roof\\nroad\\nwater",
                          "--model", str(tiny_bundle), "--device", "cpu", "--vector", str(tmp_path / "p.gpkg"),
                          "--areas", str(tmp_path / "areas.csv")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CPUExecutionProvider" in run.stderr
    dataset = gdal.Open(str(tmp_path / "classes.tif"))
    band = dataset.GetRasterBand(1)
    band.GetDescription()
    assert band.GetCategoryNames() == ["building", "road", "water", "unclassified"]
    assert dataset.GetGeoTransform() == gdal.Open(source).GetGeoTransform()
    assert (tmp_path / "p.gpkg").is_file() and (tmp_path / "areas.csv").read_text().count("\n") == 5


def test_an_unforeseen_failure_is_one_line_and_debug_prints_the_traceback(tmp_path):
    """A failure nobody foresaw (here a KeyError from inside the command) is one line without a traceback; --debug,
    before or after the command's name, adds the traceback."""
    crash = ("import sys\nfrom segearth_qgis import cli\n"
             "def boom(args):\n    raise KeyError('boom')\n"
             "cli.export = boom\n"  # the parser binds the module's export when main builds it
             "sys.exit(cli.main(sys.argv[1:]))\n")
    arguments = ["export", "--clip", "c.pt", "--arch", "ViT-B-16", "--out", str(tmp_path / "b")]
    plain = subprocess.run([sys.executable, "-c", crash, *arguments], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1
    assert plain.stderr.strip() == ("export failed: unexpected KeyError: 'boom'; run again with --debug for the "
                                    "traceback: please report it")
    for debug in (["--debug", *arguments], [*arguments, "--debug"]):
        run = subprocess.run([sys.executable, "-c", crash, *debug], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
        assert "KeyError: 'boom'" in run.stderr


def test_a_missing_input_is_one_sentence_naming_it(tmp_path):
    missing = tmp_path / "nowhere.tif"
    run = subprocess.run([sys.executable, "-c", NO_QGIS, "segment", str(missing), str(tmp_path / "out.tif"),
                          "--classes", "road\\nwater"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("segment failed: ") and str(missing) in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out.tif").exists()


def cli(*arguments, timeout=300):
    return subprocess.run([sys.executable, "-c", NO_QGIS, *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout)


def test_an_output_onto_the_input_is_refused_and_the_input_kept(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(60, 80, seed=12))
    before = open(source, "rb").read()
    for output, extra in ((source, []), (tmp_path / "c.tif", ["--areas", source]),
                          (tmp_path / "c.tif", ["--confidence", tmp_path / "c.tif"])):
        run = cli("segment", source, output, "--classes", "road", "--model", tiny_bundle, *extra)
        assert run.returncode == 1 and run.stderr.splitlines()[-1].startswith("segment failed: ") and \
            "Traceback" not in run.stderr
        assert "would overwrite the" in run.stderr and "choose another file name" in run.stderr
    assert open(source, "rb").read() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


# the peak RSS of this process alone (getrusage's ru_maxrss keeps the parent's peak across fork and exec)
MEASURED = NO_QGIS.replace("sys.exit(code)", "print([line.split()[1] for line in open('/proc/self/status') "
                                             "if line.startswith('VmHWM:')][0])\nsys.exit(code)")


def test_a_far_too_fine_resolution_is_refused_at_once_with_little_memory(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(100, 100, seed=13))  # 50 m at 0.5 m
    run = subprocess.run([sys.executable, "-c", MEASURED, "segment", source, str(tmp_path / "c.tif"), "--classes",
                          "road\\nwater", "--model", str(tiny_bundle), "--resolution", "0.0004"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "a 125,000 x 125,000 px processing grid, 1,24" in run.stderr and "choose a RESOLUTION of at least" in \
        run.stderr
    assert int(run.stdout.strip()) < 600 * 1024, "peak RSS in KiB: the refusal came after allocating"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_bands_as_one_comma_list(tiny_bundle, tmp_path):
    bands = np.concatenate([scene_bands(50, 60, seed=14), scene_bands(50, 60, seed=15)[:1]])
    source = write_geotiff(tmp_path / "four.tif", bands)
    outputs = []
    for spelling in (["3,2,1"], ["3", "2", "1"]):
        out = tmp_path / f"c{len(outputs)}.tif"
        run = cli("segment", source, out, "--classes", "road\\nwater", "--model", tiny_bundle, "--bands", *spelling)
        assert run.returncode == 0, run.stderr
        assert "bands [3, 2, 1]" in run.stderr
        outputs.append(gdal.Open(str(out)).ReadAsArray())
    assert np.array_equal(*outputs)


@contextlib.contextmanager
def small_disk(path, size, read_only=False):
    """A tmpfs of ``size`` mounted at ``path`` (needs root; skips otherwise)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("a small disk needs root and mount: the full-disk sentence is checked where tmpfs can be mounted")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_says_so_naming_the_output_and_leaves_nothing(tiny_bundle, tmp_path):
    rng = np.random.default_rng(16)
    source = write_geotiff(tmp_path / "scene.tif", rng.integers(0, 255, (3, 400, 400), dtype=np.uint8))
    with small_disk(tmp_path / "disk", "200k") as disk:
        run = cli("segment", source, disk / "c.tif", "--classes", "road\\nwater\\ntree", "--model", tiny_bundle,
                  "--confidence", disk / "confidence.tif")
        assert run.returncode == 1
        assert run.stderr.strip().splitlines()[-1].startswith("segment failed: the disk is full (writing "
                                                               f"{disk}/"), run.stderr
        assert ".partial" not in run.stderr and list(disk.iterdir()) == []


def test_a_read_only_folder_is_refused_naming_the_output_not_a_temporary_file(tiny_bundle, tmp_path):
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(40, 40, seed=17))
    with small_disk(tmp_path / "ro", "1m", read_only=True) as folder:
        run = cli("segment", source, folder / "c.tif", "--classes", "road", "--model", tiny_bundle)
        assert run.returncode == 1
        assert f"segment failed: OUTPUT ({folder}/c.tif) cannot be written: the folder {folder} is read-only" in \
            run.stderr and ".partial" not in run.stderr


# the moments a signal reaches segment: each waits for a line or a percent on stderr
MOMENTS = {
    "reading": lambda err: "classes: " in err,  # the last line before the outputs are created and the first rows read
    "model": lambda err: 5 <= last_percent(err) < 30,
    "writing": lambda err: 70 <= last_percent(err) < 100,  # most window rows finished and written to the GeoTIFFs
}


def last_percent(stderr):
    found = re.findall(r"(\d+\.\d) %", stderr)
    return float(found[-1]) if found else -1.0


@pytest.fixture(scope="module")
def large_scene(tmp_path_factory):
    """A scene large enough that segment runs for a few seconds."""
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", scene_bands(800, 800, seed=5))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP and signal exit statuses are POSIX only")
@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_leaves_no_file_behind(tiny_bundle, large_scene, tmp_path, signum, moment):
    """SIGTERM and SIGHUP remove the partial outputs and the process dies of the signal; SIGINT cancels (exit 130)."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", NO_QGIS, "segment", large_scene, str(out / "classes.tif"),
                                "--classes", "building\\nroad\\nwater\\ntree", "--model", str(tiny_bundle),
                                "--device", "cpu", "--confidence", str(out / "confidence.tif"),
                                "--vector", str(out / "classes.gpkg"), "--areas", str(out / "areas.csv")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(process.stderr.fileno(), 4096), b"")))
    reader.start()
    deadline = time.monotonic() + 240
    while not MOMENTS[moment](b"".join(chunks).decode(errors="replace")):
        assert process.poll() is None, f"segment ended before the {moment} moment:\n{b''.join(chunks).decode()}"
        assert time.monotonic() < deadline, f"no {moment} moment in 240 s"
        time.sleep(0.01)
    process.send_signal(signum)
    returncode = process.wait(timeout=120)
    reader.join()
    stderr = b"".join(chunks).decode(errors="replace")
    assert returncode == (130 if signum == signal.SIGINT else -signum), stderr
    assert (sorted(os.listdir(out)) if out.exists() else []) == [], stderr
