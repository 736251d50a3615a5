"""Class colours and the .qml styles: one palette for rasters, polygons and previews; labels that stay valid XML."""

import xml.etree.ElementTree as ElementTree

import pytest

from segearth_qgis.core.gis.style import class_colors, raster_qml, vector_qml

AWKWARD = ["a<b>c", "R&D", 'the "big" one', "it's", "tab\there", "bell\x07 tower", "nul\x00", "\ufffe odd"]
READ_BACK = ["a<b>c", "R&D", 'the "big" one', "it's", "tab\there", "bell tower", "nul", " odd"]


def test_background_classes_are_grey_and_the_rest_distinct():
    colors = class_colors(["background", "building", "road", "Clutter", "water"])
    assert colors[0] == colors[3] == (160, 160, 160)
    assert len({colors[1], colors[2], colors[4]}) == 3


@pytest.mark.parametrize(("build", "entry"), [(raster_qml, ".//paletteEntry"), (vector_qml, ".//category")])
def test_qml_parses_and_keeps_the_class_names(build, entry):
    root = ElementTree.fromstring(build(AWKWARD, class_colors(AWKWARD)))
    entries = root.findall(entry)
    assert [e.get("label") for e in entries] == READ_BACK
    assert [e.get("value") for e in entries] == [str(i) for i in range(len(AWKWARD))]


def test_vector_qml_field_is_escaped_too():
    root = ElementTree.fromstring(vector_qml(["a"], [(1, 2, 3)], field='id"&<'))
    assert root.find("renderer-v2").get("attr") == 'id"&<'
