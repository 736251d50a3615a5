"""Class colours and QGIS styles (.qml) written beside outputs, so every QGIS session and headless run shows them."""

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from ..method.vocabulary import BACKGROUND_NAMES

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
            (0, 0, 128), (128, 128, 128)]
BACKGROUND_COLOR = (160, 160, 160)
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def class_colors(class_names: Iterable[str]) -> list[tuple[int, int, int]]:
    """One RGB colour per class: grey for background-like names, a fixed distinct palette for the rest."""
    colors, k = [], 0
    for name in class_names:
        if name.strip().lower() in BACKGROUND_NAMES:
            colors.append(BACKGROUND_COLOR)
        else:
            colors.append(_PALETTE[k % len(_PALETTE)])
            k += 1
    return colors


def _attribute(text: str) -> str:
    """``text`` as a quoted XML attribute value: characters XML 1.0 does not allow dropped, the rest escaped."""
    return quoteattr(_XML_INVALID.sub("", str(text)))


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def raster_qml(class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> str:
    """A paletted renderer on band 1 listing the classes (not the nodata value) with their names."""
    entries = "\n".join(f'        <paletteEntry value="{i}" color="{_hex(c)}" alpha="255" label={_attribute(name)}/>'
                        for i, (name, c) in enumerate(zip(class_names, colors, strict=True)))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def _fill_symbol(index: int, color: tuple[int, int, int]) -> str:
    rgba = "{},{},{},255".format(*color)
    props = {"color": rgba, "style": "solid", "outline_style": "no", "outline_color": "35,35,35,255",
             "outline_width": "0.26", "outline_width_unit": "MM"}
    options = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
    legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (f'      <symbol type="fill" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0"><Option type="Map">{options}</Option>'
            f'{legacy}</layer>\n      </symbol>')


def vector_qml(class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], field: str = "class_id") -> str:
    """A categorized renderer on ``field`` (the class index) with the class names as legend labels."""
    pairs = list(zip(class_names, colors, strict=True))
    categories = "\n".join(f'      <category render="true" value="{i}" symbol="{i}" label={_attribute(name)}/>'
                           for i, (name, _) in enumerate(pairs))
    symbols = "\n".join(_fill_symbol(i, color) for i, (_, color) in enumerate(pairs))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <renderer-v2 type="categorizedSymbol" attr={_attribute(field)} symbollevels="0" forceraster="0" enableorderby="0">
    <categories>
{categories}
    </categories>
    <symbols>
{symbols}
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
</qgis>
"""


def qml_path(data_path: str | os.PathLike) -> Path:
    """QGIS loads ``name.qml`` beside ``name.tif`` / ``name.gpkg`` automatically."""
    return Path(data_path).with_suffix(".qml")
