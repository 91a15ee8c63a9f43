"""Nearest copies: does a generated image copy *any* reference image, not only its prompt's own?

SSCD_Orig compares each image with its own prompt's training image, so memorization that
moves to another training image goes unseen. Here every image is compared with a whole
reference set (the memorized training images, or any folder) at once: the references are
embedded once and the similarities of a batch of images are one matrix product (or, for the
test bed's pixel SSIM, one batched call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from metrics.core import cosine_matrix
from metrics.embedders import SSCDEmbedder
from metrics.pixel_ssim import ssim_to_original
from utils.defaults import SSCD_COPY_THRESHOLD
from utils.images import load_images


@dataclass
class References:
    """A reference set: one name per image and ``similarity(images) -> [n_images, n_references]``;
    for an embedder's references also the embedder and their embeddings [m, d]."""

    names: list[str]
    similarity: Callable[[list[Image.Image]], torch.Tensor]
    threshold: float
    embedder: Callable | None = None
    embeddings: torch.Tensor | None = None


def embedded_references(embedder, paths: list[str], names: list[str], threshold: float = SSCD_COPY_THRESHOLD,
                        batch: int = 64) -> References:
    """References compared by the cosine of ``embedder``'s embeddings, each embedded once."""
    embeddings = torch.cat([embedder(load_images(paths[i:i + batch])) for i in range(0, len(paths), batch)])  # [m, d]
    return References(names, lambda images: cosine_matrix(embedder(images), embeddings), threshold, embedder, embeddings)


@dataclass
class NearestCopies:
    """Per image of one prompt: the nearest reference and its similarity."""

    similarity: torch.Tensor  # [n] to the nearest reference
    reference: list[str]  # [n] its name

    def copies(self, threshold: float, own: str | None) -> dict[str, float]:
        """Share of the images above ``threshold`` to any reference, and to one that is not ``own``."""
        above = self.similarity > threshold
        other = torch.tensor([name != own for name in self.reference])
        return dict(copies_any=above.double().mean().item(), copies_other=(above & other).double().mean().item())


def nearest_copies(references: References, images: list[Image.Image],
                   embeddings: torch.Tensor | None = None) -> NearestCopies:
    """The nearest reference of each image: one similarity matrix [n, m], its row maxima.
    embeddings: the images' [n, d] by the references' own embedder, when already computed."""
    if embeddings is not None and references.embeddings is not None:
        similarity = cosine_matrix(embeddings, references.embeddings)
    else:
        similarity = references.similarity(images)
    values, indices = similarity.max(dim=1)
    return NearestCopies(values.float(), [references.names[i] for i in indices.tolist()])


def similarity_to_original(kind: str, device=None, sscd_model: str | None = None):
    """original, images -> the similarity of each image to the original [n]: SSCD's cosine
    (``kind`` "sscd") or pixel SSIM ("pixel_ssim", the test bed's stand-in)."""
    if kind == "pixel_ssim":
        return ssim_to_original
    if kind != "sscd":
        raise ValueError(f"unknown similarity {kind!r}; expected 'sscd' or 'pixel_ssim'")
    sscd = SSCDEmbedder(sscd_model, device)
    return lambda original, images: cosine_matrix(sscd([original]), sscd(images))[0].float()
