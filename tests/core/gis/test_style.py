"""Class colours: one palette for rasters, polygons and previews."""

from segearth_qgis.core.gis.style import class_colors


def test_background_classes_are_grey_and_the_rest_distinct():
    colors = class_colors(["background", "building", "road", "Clutter", "water"])
    assert colors[0] == colors[3] == (160, 160, 160)
    assert len({colors[1], colors[2], colors[4]}) == 3
