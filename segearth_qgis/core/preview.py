"""Class colours and a PNG preview (the input beside the coloured classes, with a legend) for people to look at."""

import numpy as np

_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128)]
_BACKGROUND_NAMES = {"background", "clutter", "others", "other", "unclassified"}


def class_colors(class_names):
    """One RGB colour per class: grey for background-like names, a fixed distinct palette for the rest."""
    colors, k = [], 0
    for name in class_names:
        if name.strip().lower() in _BACKGROUND_NAMES:
            colors.append((160, 160, 160))
        else:
            colors.append(_COLORS[k % len(_COLORS)])
            k += 1
    return colors


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
