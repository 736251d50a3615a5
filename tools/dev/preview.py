"""A PNG preview (the input beside the coloured classes, with a legend) for people to look at."""

import numpy as np

from segearth_qgis.core.gis.style import class_colors


def write_preview(path, rgb, labels, class_names, title=""):
    """Save ``path`` as PNG: the RGB input, the labels in colour, and a legend with each class's share of pixels."""
    from PIL import Image, ImageDraw

    colors = np.array(class_colors(class_names), np.uint8)
    height, width = labels.shape
    legend_w, margin = 220, 10
    canvas = Image.new("RGB", (2 * width + legend_w + 3 * margin, height + 2 * margin + 24), "white")
    canvas.paste(Image.fromarray(rgb), (margin, margin + 24))
    canvas.paste(Image.fromarray(colors[labels]), (2 * margin + width, margin + 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), title, fill="black")
    x0 = 3 * margin + 2 * width
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    for i, name in enumerate(class_names):
        y = margin + 24 + i * 22
        draw.rectangle([x0, y, x0 + 16, y + 16], fill=tuple(int(c) for c in colors[i]), outline="black")
        draw.text((x0 + 24, y + 2), f"{name}  {100 * counts[i] / labels.size:.1f} %", fill="black")
    canvas.save(path)
    return path
