"""Image files by name: generated images by prompt and sample, original training images.

Generated images are named ``img_{prompt:04d}_{sample:02d}.jpg`` (script 4,
``utils.generation.IMAGE_NAME``); original training images ``{prompt:04d}.png`` (the test
bed) or ``{prompt:04d}_anything.jpg`` (the authors' downloads), by row of the prompt file.
"""

from __future__ import annotations

import logging
import os
import re

from PIL import Image, UnidentifiedImageError

from utils.generation import image_path

logger = logging.getLogger(__name__)

GENERATED_NAME = re.compile(r"img_(\d{4,})_(\d{2,})\.jpg")  # utils.generation.IMAGE_NAME
ORIGINAL_NAME = re.compile(r"(\d{4,})(_.*)?\.(jpg|jpeg|png|webp)", re.IGNORECASE)


def _listing(directory: str, what: str) -> list[str]:
    if not os.path.isdir(directory):
        raise ValueError(f"{what} folder {directory} not found")
    return sorted(os.listdir(directory))


def generated_images(directory: str) -> dict[int, list[str]]:
    """Paths of the generated images of each prompt, ``{prompt: [sample 0, sample 1, ...]}``.

    Every prompt must have the same samples 0..n-1; a gap is a ValueError naming the missing file.
    """
    samples: dict[int, set[int]] = {}
    for name in _listing(directory, "image"):
        match = GENERATED_NAME.fullmatch(name)
        if match:
            samples.setdefault(int(match[1]), set()).add(int(match[2]))
    if not samples:
        raise ValueError(f"image folder {directory} has no images named img_PPPP_SS.jpg")
    count = max(max(s) for s in samples.values()) + 1
    for prompt, present in sorted(samples.items()):
        missing = [j for j in range(count) if j not in present]
        if missing:
            raise ValueError(f"{image_path(directory, prompt, missing[0])} missing "
                             f"(other prompts have {count} samples)")
    return {prompt: [image_path(directory, prompt, j) for j in range(count)] for prompt in sorted(samples)}


def paired_images(directory: str, reference: str) -> dict[int, list[tuple[str, str]]]:
    """Image j of each prompt in ``directory`` with image j of the same prompt in ``reference``
    (the run without deactivation); a file present in only one folder is a ValueError naming it."""
    images, references = generated_images(directory), generated_images(reference)
    names = {os.path.basename(p) for paths in images.values() for p in paths}
    reference_names = {os.path.basename(p) for paths in references.values() for p in paths}
    unmatched = sorted(names ^ reference_names)
    if unmatched:
        present, absent = (directory, reference) if unmatched[0] in names else (reference, directory)
        raise ValueError(f"{os.path.join(present, unmatched[0])} has no counterpart "
                         f"{os.path.join(absent, unmatched[0])}")
    return {prompt: list(zip(paths, references[prompt])) for prompt, paths in images.items()}


def original_images(directory: str) -> dict[int, str]:
    """Path of the training image of each prompt, ``{prompt: path}``."""
    originals: dict[int, str] = {}
    for name in _listing(directory, "original image"):
        match = ORIGINAL_NAME.fullmatch(name)
        if not match:
            continue
        prompt = int(match[1])
        if prompt in originals:
            raise ValueError(f"two original images for prompt {prompt} in {directory}: "
                             f"{os.path.basename(originals[prompt])} and {name}")
        originals[prompt] = os.path.join(directory, name)
    return originals


def load_images(paths: list[str]) -> list[Image.Image]:
    """RGB images; an unreadable file is a ValueError naming it."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
    return images
