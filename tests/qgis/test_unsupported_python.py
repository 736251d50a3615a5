"""A QGIS whose Python is older than the plugin needs gets the stub plugin: one message in the bar and the log, no
provider, no traceback; the two files it reads parse with Python 3.6's grammar."""

import ast
import json
import os
import subprocess

import pytest

from tools.build.environment import ROOT, SYSTEM_PYTHON

PROBE = """
import json, sys
from qgis.core import Qgis, QgsApplication

app = QgsApplication([], False)
app.initQgis()
logged = []
QgsApplication.messageLog().messageReceived.connect(
    lambda text, tag, level: logged.append({"text": text, "tag": tag, "level": int(level)}))


class Bar:
    pushed = []

    def pushMessage(self, *args):
        self.pushed.append([a if isinstance(a, str) else int(a) for a in args])


class Iface:
    bar = Bar()

    def messageBar(self):
        return self.bar


import segearth_qgis

segearth_qgis.MINIMUM_PYTHON = (99, 0)
plugin = segearth_qgis.classFactory(Iface())
plugin.initGui()
plugin.initProcessing()
plugin.unload()
print(json.dumps({"class": type(plugin).__module__ + "." + type(plugin).__name__, "pushed": Bar.pushed,
                  "logged": logged, "critical": int(Qgis.Critical),
                  "running": ".".join(map(str, sys.version_info[:3])),
                  "provider": QgsApplication.processingRegistry().providerById("segearth") is not None,
                  "full_plugin_imported": "segearth_qgis.plugin" in sys.modules}))
app.exitQgis()
"""


def test_an_older_python_gets_one_clear_message_and_no_provider(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    back = json.loads(run.stdout.strip().splitlines()[-1])
    assert back["class"] == "segearth_qgis.unsupported.UnsupportedPythonPlugin"
    assert not back["full_plugin_imported"] and not back["provider"]
    [(title, text, level, duration)] = back["pushed"]
    assert title == "SegEarth-OV" and level == back["critical"] and duration == 0
    assert "needs Python 99.0 or newer" in text and f"runs Python {back['running']}" in text
    ours = [entry for entry in back["logged"] if entry["tag"] == "SegEarth-OV"]
    assert ours == [{"text": text, "tag": "SegEarth-OV", "level": back["critical"]}]


@pytest.mark.parametrize("name", ["__init__.py", "unsupported.py"])
def test_what_an_older_python_reads_parses_with_python_3_6_grammar(name):
    source = (ROOT / "segearth_qgis" / name).read_text(encoding="utf-8")
    ast.parse(source, filename=name, feature_version=(3, 6))
