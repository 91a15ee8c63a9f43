"""Pixel SSIM between generated images and training images: the weight-free stand-in for SSCD
on the built-in test bed (its 48x48 images are compared pixel by pixel)."""

from __future__ import annotations

import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import to_tensor


def pixel_ssim_matrix(generated: list[Image.Image], references: torch.Tensor) -> torch.Tensor:
    """Pixel SSIM of every generated image with every reference [m, 3, H, W] (values in [0, 1]),
    in one batched call: [n, m]."""
    size = (references.shape[-1], references.shape[-2])
    images = torch.stack([to_tensor(image.convert("RGB").resize(size)) for image in generated])  # [n, 3, H, W]
    n, m = len(images), len(references)
    pairs = lambda x: x.reshape(n * m, *references.shape[1:])
    ssim = structural_similarity_index_measure(pairs(images[:, None].expand(n, m, *images.shape[1:])),
                                               pairs(references[None].expand(n, m, *references.shape[1:])),
                                               data_range=1.0, reduction="none")
    return ssim.reshape(n, m)


def ssim_to_original(original: Image.Image, generated: list[Image.Image]) -> torch.Tensor:
    """Pixel SSIM of each generated image to the training image: [n]."""
    return pixel_ssim_matrix(generated, to_tensor(original.convert("RGB"))[None])[:, 0]
