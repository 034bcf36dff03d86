"""Draw grounded boxes and their phrases on an RGB image (Pillow only, no OpenCV).

RViz has no display for ``vision_msgs/Detection2D``, so the annotated image is how a person sees
what a command was grounded to.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .pipeline import Grounding

__all__ = ["PALETTE", "annotate", "annotate_grounding"]

# Distinct, saturated colours; phrase i gets PALETTE[i % len]. RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 200, 255),
    (255, 200, 0),
    (120, 255, 120),
    (255, 100, 255),
    (255, 150, 60),
    (160, 120, 255),
    (0, 230, 180),
)

_BoxLabel = tuple[Sequence[float], str, int]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def annotate(rgb: np.ndarray, boxes: Sequence[_BoxLabel], caption: str = "") -> np.ndarray:
    """Return a copy of ``rgb`` with boxes, their labels and an optional caption drawn.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB image.
        boxes: ``(xyxy, label, colour_index)`` per box; ``xyxy`` in pixels, ``colour_index``
            picks the colour (boxes of one phrase share it).
        caption: text drawn in a black band along the bottom edge (e.g. the grounded answer),
            one line, cut with an ellipsis to fit the image width.
    """
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(min(width, height) / 160))
    font = _font(max(12, round(height / 32)))
    for xyxy, label, colour_index in boxes:
        colour = PALETTE[colour_index % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        # Pillow draws the outline inside [x1, x2]; clamp so off-image boxes still show an edge.
        x1, x2 = sorted((min(max(x1, 0.0), width - 1.0), min(max(x2, 0.0), width - 1.0)))
        y1, y2 = sorted((min(max(y1, 0.0), height - 1.0), min(max(y2, 0.0), height - 1.0)))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if label:
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            tw, th = right - left, bottom - top
            # Label above the box, or inside it when the box touches the top edge.
            ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1 + line
            draw.rectangle((x1, ty, x1 + tw + 2 * line, ty + th + 2 * line), fill=colour)
            draw.text((x1 + line - left, ty + line - top), label, fill=(0, 0, 0), font=font)
    if caption:
        # No line is wider than ~width/4 characters at this font size; cutting there first keeps
        # the fitting loop short even for a huge caption.
        text = " ".join(caption.split())[: max(8, width // 4)]
        if draw.textlength(text, font=font) > width - 8:
            while len(text) > 1 and draw.textlength(text + "…", font=font) > width - 8:
                text = text[:-1]
            text += "…"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.rectangle((0, height - (bottom - top) - 8, width, height), fill=(0, 0, 0))
        draw.text((4 - left, height - (bottom - top) - 4 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(image).copy()


def annotate_grounding(rgb: np.ndarray, grounding: Grounding) -> np.ndarray:
    """Draw every box of a grounding, labelled with its phrase and score, and the answer as caption."""
    boxes = [
        (box, f"{phrase.text} {score:.2f}".strip(), i)
        for i, phrase in enumerate(grounding.phrases)
        for box, score in zip(phrase.boxes_xyxy, phrase.scores)
    ]
    return annotate(rgb, boxes, grounding.answer)
