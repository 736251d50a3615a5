"""The command-line segment (core only, no qgis import)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

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
