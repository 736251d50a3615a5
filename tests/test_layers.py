"""The house rules hold (tools/dev/layers.py): no qgis in the core, no lower layer importing a higher one, no import
circle, the plugin never importing the developer tools, build tooling on the standard library; and the check
finds each of them when one is planted."""

import shutil

import pytest

from tools.build.environment import ROOT
from tools.dev.layers import violations


def test_the_house_keeps_its_layers():
    assert violations(ROOT) == []


@pytest.fixture()
def copy_of_the_tree(tmp_path):
    for top in ("segearth_qgis", "tools"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(root, relative, text):
    path = root / relative
    path.write_text(path.read_text(encoding="utf-8") + text if path.exists() else text, encoding="utf-8")


def test_a_qgis_import_inside_a_function_of_core_method_is_found(copy_of_the_tree):
    plant(copy_of_the_tree, "segearth_qgis/core/method/planted.py",
          '"""Planted."""\n\n\ndef later():\n    from qgis.core import QgsApplication\n\n    return QgsApplication\n')
    found = violations(copy_of_the_tree)
    assert any("core/method/planted.py:5" in line and "qgis" in line for line in found), found


def test_a_circle_between_two_method_modules_is_found(copy_of_the_tree):
    plant(copy_of_the_tree, "segearth_qgis/core/method/vocabulary.py",
          "\n\ndef planted():\n    from .tokenizer import ClipTokenizer\n\n    return ClipTokenizer\n")
    plant(copy_of_the_tree, "segearth_qgis/core/method/tokenizer.py",
          "\n\ndef planted():\n    from .vocabulary import Vocabulary\n\n    return Vocabulary\n")
    found = violations(copy_of_the_tree)
    assert found == ["import circle: segearth_qgis.core.method.tokenizer <-> segearth_qgis.core.method.vocabulary"]


def test_a_lower_layer_importing_a_higher_one_is_found(copy_of_the_tree):
    plant(copy_of_the_tree, "segearth_qgis/core/gis/style.py", "\n\ndef planted():\n    from .. import pipeline\n")
    found = violations(copy_of_the_tree)
    assert any("core.gis.style imports segearth_qgis.core.pipeline" in line and "floor" in line for line in found)
    assert any(line.startswith("import circle:") and "segearth_qgis.core.gis.style" in line for line in found)


def test_the_installer_room_and_the_build_tools_keep_to_their_imports(copy_of_the_tree):
    plant(copy_of_the_tree, "segearth_qgis/core/setup/dependencies.py", "\n\ndef planted():\n    import numpy\n"
          "    from ..gis import raster\n")
    plant(copy_of_the_tree, "tools/build/plugin.py", "\n\ndef planted():\n    import numpy\n")
    plant(copy_of_the_tree, "segearth_qgis/core/pipeline.py", "\n\ndef planted():\n    from tools.dev import bench\n")
    found = "\n".join(violations(copy_of_the_tree))
    assert "core/setup may import only core/common" in found
    assert "tools/build/plugin.py" in found and "standard library only" in found
    assert "the plugin never imports the developer tools" in found
