"""Nearest copies among a whole reference set, and the image grids that show them."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from metrics.copies import References, embedded_references, nearest_copies
from metrics.embedders import PixelEmbedder
from metrics.pixel_ssim import pixel_ssim_matrix, ssim_to_original
from metrics.plots import GRID_CELL, GRID_LABEL_WIDTH, image_grid


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


def test_the_table_from_two_shares_of_the_prompts_is_the_table_measured_at_once(tmp_path):
    """Under a launcher each process scores its share of the prompts (tables.table_scores); the
    table built from the two shares together is the one measured in one go."""
    from experiments import tables
    from experiments.rows import PLAIN, table_rows
    from utils.generation import image_path

    other = next(row.name for row in table_rows() if row.name != PLAIN)
    folders = {name: str(tmp_path / f"row{k}") for k, name in enumerate((PLAIN, other))}
    quality = {name: str(tmp_path / f"held_out{k}") for k, name in enumerate((PLAIN, other))}
    for k, folder in enumerate([*folders.values(), *quality.values()]):
        os.makedirs(folder)
        for prompt in range(5):
            for sample, image in enumerate(pictures(3, 100 * k + prompt)):
                image.save(image_path(folder, prompt, sample))
    originals = {}
    for prompt, image in enumerate(pictures(5, 7)):
        originals[prompt] = str(tmp_path / f"original_{prompt}.png")
        image.save(originals[prompt])
    measures = tables.embedder_measures(PixelEmbedder())
    measures.align_name, measures.align = "A", lambda images, caption: float(len(caption) % 3) / len(images)
    measures.references = embedded_references(PixelEmbedder(), list(originals.values()),
                                              [f"o{p}" for p in originals], threshold=0.2)
    captions = {p: "x" * (p + 1) for p in range(5)}
    types = {p: "VM" if p < 3 else "TM" for p in range(5)}
    table = lambda scores=None: tables.build_table(folders, quality, originals, captions, captions, types,
                                                   {p: p for p in range(5)}, measures, scores=scores)
    shares = [tables.table_scores(folders, quality, originals, captions, captions, measures,
                                  {p for p in range(5) if p % 2 == rank}, {p for p in range(5) if p % 2 == rank})
              for rank in range(2)]
    merged = {part: {name: {**shares[0][part][name], **shares[1][part][name]} for name in shares[0][part]}
              for part in shares[0]}
    whole = table()
    assert set(whole["rows"]) == {PLAIN, other} and whole["rows"][other]["quality"] is not None
    assert table(merged) == whole
    assert table(shares[0]) != whole  # one share alone is not the table
