"""A weight-free stand-in for A_CLIP on the test bed: does an image show what its caption says?

An ordinary caption names a shape colour and a background ("a red circle on gray background",
``testbed.synthetic_data``). The background is read as the median colour of the image's
border, the shape as the median colour of the pixels far from the background; an image is
aligned when both are the named colours' nearest palette entries. Memorized captions name
no colours and are not scored.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from testbed.synthetic_data import BACKGROUNDS, COLORS

BORDER = 3  # pixels of the image edge read as background (shapes keep a margin of their half-size)
SHAPE_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is the shape's
MIN_SHAPE_PIXELS = 12  # fewer differing pixels: no shape drawn
CAPTION = re.compile(rf"a ({'|'.join(COLORS)}) \w+ on ({'|'.join(BACKGROUNDS)}) background")


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name], float) - colour) ** 2)))


def read_colours(image: Image.Image) -> tuple[str | None, str]:
    """(shape colour or None when no shape is drawn, background colour) of a generated image."""
    pixels = np.asarray(image.convert("RGB"), dtype=float)  # [h, w, 3]
    edge = np.ones(pixels.shape[:2], bool)
    edge[BORDER:-BORDER, BORDER:-BORDER] = False
    background = np.median(pixels[edge], axis=0)
    shape = np.linalg.norm(pixels - background, axis=-1) > SHAPE_DISTANCE
    shape_colour = _nearest(np.median(pixels[shape], axis=0), COLORS) if shape.sum() >= MIN_SHAPE_PIXELS else None
    return shape_colour, _nearest(background, BACKGROUNDS)


def caption_colours(caption: str) -> tuple[str, str] | None:
    """(shape colour, background) an ordinary caption names; None for any other caption."""
    match = CAPTION.fullmatch(caption)
    return (match[1], match[2]) if match else None


def alignment(images: list[Image.Image], caption: str) -> float | None:
    """Fraction of ``images`` whose shape and background colours are the caption's (None: not scorable)."""
    expected = caption_colours(caption)
    if expected is None:
        return None
    return sum(read_colours(image) == expected for image in images) / len(images)
