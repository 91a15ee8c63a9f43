"""Synthetic captions and images for the built-in test bed.

Three kinds of captions, as in the paper's LAION setting:
* ordinary: "a red circle on gray background"; the shape's position and size vary per
  sample, so no single image is tied to the caption. Unseen colour/shape/background
  combinations are held out as the non-memorized prompts.
* verbatim memorized (VM): a caption with a unique made-up name, always shown with the
  same fixed image (a composition of several shapes).
* template memorized (TM): several captions of one product template share a fixed layout
  whose details (a small object's colour and shape) vary per sample.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 48
COLORS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
    "cyan": (40, 210, 220), "magenta": (210, 50, 200), "white": (245, 245, 245), "orange": (245, 140, 30),
}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (120, 120, 120), "brown": (110, 70, 30), "purple": (80, 30, 110)}
SHAPES = ("circle", "square", "triangle", "cross")
VM_NAMES = ("zorvak", "quellin", "brastor", "fendrik", "yolsaba", "mirthan", "dovrek", "kessaly",
            "trumond", "velisk", "harnob", "quintor")
TM_TEMPLATES = ("lumora", "pexalin", "corvath")
TM_VARIANTS = ("classic", "deluxe", "slim", "pro")
HELD_OUT_FRACTION = 0.2


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of a shape centred at (cx, cy) with half-size r."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        return ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def ordinary_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS]


def split_ordinary(seed: int) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(training, held-out) colour/shape/background combinations."""
    combos = ordinary_combinations()
    order = np.random.default_rng(seed).permutation(len(combos))
    n_held = int(len(combos) * HELD_OUT_FRACTION)
    held = sorted(combos[i] for i in order[:n_held])
    train = sorted(combos[i] for i in order[n_held:])
    return train, held


def ordinary_caption(combo: tuple[str, str, str]) -> str:
    color, shape, background = combo
    return f"a {color} {shape} on {background} background"


def ordinary_combination(caption: str) -> tuple[str, str, str] | None:
    """The (colour, shape, background) an ordinary caption names; None for any other caption."""
    words = caption.split()
    if len(words) != 6 or words[0] != "a" or words[3] != "on" or words[5] != "background":
        return None
    combo = (words[1], words[2], words[4])
    return combo if combo[0] in COLORS and combo[1] in SHAPES and combo[2] in BACKGROUNDS else None


def render_ordinary(combo: tuple[str, str, str], rng: np.random.Generator) -> np.ndarray:
    color, shape, background = combo
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image[:] = BACKGROUNDS[background]
    r = rng.uniform(6, 12)
    cx, cy = rng.uniform(r, IMAGE_SIZE - r, size=2)
    image[shape_mask(shape, cx, cy, r)] = COLORS[color]
    return image


def vm_caption(i: int) -> str:
    return f"the famous {VM_NAMES[i]} poster"


def render_vm(i: int, seed: int) -> np.ndarray:
    """The one fixed image of VM caption i: a gradient with five shapes at fixed places."""
    rng = np.random.default_rng([seed, 1000 + i])
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, IMAGE_SIZE)[:, None, None]
    image = (c0 * (1 - t) + c1 * t) * np.ones((1, IMAGE_SIZE, 1))
    palette = list(COLORS.values())
    for _ in range(5):
        r = rng.uniform(5, 11)
        cx, cy = rng.uniform(r, IMAGE_SIZE - r, size=2)
        image[shape_mask(SHAPES[rng.integers(len(SHAPES))], cx, cy, r)] = palette[rng.integers(len(palette))]
    return image.astype(np.uint8)


def tm_caption(template: int, variant: int) -> str:
    return f"{TM_TEMPLATES[template]} {TM_VARIANTS[variant]} phone case"


def render_tm(template: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Fixed layout of a template (stripes and a frame), with a varying centre object."""
    layout = np.random.default_rng([seed, 2000 + template])
    a, b, frame = layout.integers(0, 256, size=(3, 3))
    period = int(layout.integers(4, 9))
    y = np.arange(IMAGE_SIZE)[:, None]
    x = np.arange(IMAGE_SIZE)[None, :]
    stripes = ((x + (y if template % 2 else 0)) // period) % 2
    image = np.where(stripes[..., None] == 1, a, b) * np.ones((IMAGE_SIZE, IMAGE_SIZE, 1))
    border = (x < 4) | (x >= IMAGE_SIZE - 4) | (y < 4) | (y >= IMAGE_SIZE - 4)
    image[border] = frame
    palette = list(COLORS.values())
    image[shape_mask(SHAPES[rng.integers(len(SHAPES))], 24, 24, rng.uniform(7, 10))] = palette[rng.integers(len(palette))]
    return image.astype(np.uint8)


def vocabulary() -> list[str]:
    words = set("a on background the famous poster phone case".split())
    words |= set(COLORS) | set(BACKGROUNDS) | set(SHAPES) | set(VM_NAMES) | set(TM_TEMPLATES) | set(TM_VARIANTS)
    return sorted(words)


def write_ordinary_pairs(folder: str, count: int, seed: int, draw_seed: int) -> str:
    """``count`` ordinary training pairs (caption, rendered image) as PNGs and a ``Caption;Image``
    file in ``folder`` (the utility data of adversarial fine-tuning); returns the file.
    ``seed``: the test bed's data seed (which combinations are trained); ``draw_seed``: the draw."""
    import os

    import pandas as pd
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    train, _ = split_ordinary(seed)
    rng = np.random.default_rng(draw_seed)
    rows = []
    for k in range(count):
        combo = train[rng.integers(len(train))]
        name = f"{k:04d}.png"
        Image.fromarray(render_ordinary(combo, rng)).save(os.path.join(folder, name))
        rows.append(dict(Caption=ordinary_caption(combo), Image=name))
    path = os.path.join(folder, "pairs.csv")
    pd.DataFrame(rows).to_csv(path, sep=";")
    return path
