"""Nearest copies among a whole reference set, and the image grids that show them."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from metrics.copies import References, embedded_references, nearest_copies
from metrics.embedders import PixelEmbedder
from metrics.plots import GRID_CELL, GRID_LABEL_WIDTH, image_grid
from metrics.pixel_ssim import pixel_ssim_matrix, ssim_to_original


def pictures(count, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def test_nearest_reference_and_copy_rates(tmp_path):
    references = pictures(5, 0)
    generated = [references[2], references[4], pictures(1, 1)[0]]  # a copy of its own, of another, of none
    paths = []
    for k, image in enumerate(references):
        paths.append(str(tmp_path / f"ref_{k}.png"))
        image.save(paths[-1])
    refs = embedded_references(PixelEmbedder(), paths, [f"ref{k}" for k in range(5)], threshold=0.9)
    nearest = nearest_copies(refs, generated)
    assert nearest.reference[:2] == ["ref2", "ref4"] and nearest.similarity[:2].tolist() == pytest.approx([1, 1])
    assert nearest.similarity[2] < 0.5
    assert nearest.copies(0.9, own="ref2") == pytest.approx(dict(copies_any=2 / 3, copies_other=1 / 3))


def test_pixel_ssim_matrix_is_every_pair_at_once():
    generated, references = pictures(3, 2), pictures(4, 3)
    matrix = pixel_ssim_matrix(generated, torch.stack([to_tensor(r) for r in references]))
    assert matrix.shape == (3, 4)
    for j, reference in enumerate(references):
        torch.testing.assert_close(matrix[:, j], ssim_to_original(reference, generated))
    refs = References(["a", "b", "c", "d"], lambda images: pixel_ssim_matrix(
        images, torch.stack([to_tensor(r) for r in references])), 0.5)
    assert nearest_copies(refs, [references[3]]).reference == ["d"]


def test_grid_has_a_cell_per_image_and_a_row_per_prompt(tmp_path):
    images = pictures(3, 4)
    rows = [("0: a caption", [(images[0], "original", None), (images[1], "0003 0.72", "other"), (None, "", None)]),
            ("1: another", [(images[2], "original", None), (images[0], "0001 0.91", "own"), (images[1], "x", None)])]
    path = image_grid("title", [("original", 1), ("a setting with a long name", 2)], rows, str(tmp_path / "g.png"))
    with Image.open(path) as grid:
        assert grid.width == GRID_LABEL_WIDTH + 3 * GRID_CELL and grid.height > 2 * GRID_CELL
        # the second row's first image is in place: its centre pixel is the picture's
        header = grid.height - 2 * (GRID_CELL + 24)
        centre = grid.getpixel((GRID_LABEL_WIDTH + GRID_CELL // 2, header + GRID_CELL + 24 + GRID_CELL // 2))
        assert centre != (255, 255, 255)
