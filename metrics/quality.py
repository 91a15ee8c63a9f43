"""Image quality: FID, KID and CLIP-FID of generated images against reference images (SPEC §6).

clean-fid in clean mode: Inception features (clean-fid's torchscript Inception, resized to
299x299 by clean-fid) give FID and KID; CLIP ViT-B/32 image embeddings (resize 224 bicubic,
centre crop, as clean-fid's ``clip_vit_b_32`` model) give CLIP-FID. The paper generates
images for COCO prompts and compares them with real COCO images.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from cleanfid import fid as cleanfid
from PIL import Image
from torchvision import transforms

from metrics import cli
from utils.cli import non_negative_int, positive_int
from metrics.embedders import CLIPEmbedder
from utils.cli import parse, parser_for, run
from utils.models import resolve_device

logger = logging.getLogger(__name__)
JSON_NAME = "quality.json"
FEATURE_MODE = "clean"  # clean-fid's clean resizing (SPEC §6)
INCEPTION_FOLDER = "/tmp"  # where clean-fid looks for (and downloads) its Inception weights
INCEPTION_FILE = "inception-2015-12-05.pt"
QUALITY_METRICS = ("fid", "kid", "clip_fid")
BATCH_SIZE = 32  # clean-fid's default for compute_fid / compute_kid
NUM_WORKERS = 4  # data-loader processes for clean-fid's resizing


@dataclass
class FeatureExtractor:
    """A clean-fid feature model: ``model`` maps images [n, 3, h, w] with values in [0, 255]
    to features [n, d]; ``resize`` maps a uint8 [H, W, 3] array to [h, w, 3] (None: clean-fid's
    clean resize to 299x299)."""

    model: Callable[[torch.Tensor], torch.Tensor]
    resize: Callable[[np.ndarray], np.ndarray] | None = None


def inception_extractor(device: torch.device) -> FeatureExtractor:
    """clean-fid's Inception (the features of FID and KID); a one-line ValueError when its
    weights are neither in /tmp nor downloadable."""
    from cleanfid.features import build_feature_extractor

    try:
        return FeatureExtractor(build_feature_extractor(FEATURE_MODE, device, use_dataparallel=False))
    except OSError as error:
        raise ValueError(f"clean-fid's Inception weights {os.path.join(INCEPTION_FOLDER, INCEPTION_FILE)} are missing "
                         f"and could not be downloaded ({error}); copy the file there") from None


class ClipResize:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop ``size`` x ``size``:
    clean-fid's CLIP preprocessing, uint8 [H, W, 3] -> [size, size, 3]. A class, so that
    data-loader workers can pickle it."""

    def __init__(self, size: int):
        self.crop = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                        transforms.CenterCrop(size)])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.crop(Image.fromarray(image.astype(np.uint8)).convert("RGB"))).astype(np.uint8)


def clip_extractor(embedder: CLIPEmbedder) -> FeatureExtractor:
    """CLIP image embeddings as clean-fid features (the CLIP-FID of clean-fid's ``clip_vit_b_32``)."""
    return FeatureExtractor(embedder.pixel_features, ClipResize(embedder.image_size))


def folder_features(directory: str, extractor: FeatureExtractor, device: torch.device,
                    batch_size: int = BATCH_SIZE, num_workers: int = NUM_WORKERS) -> np.ndarray:
    """Features [n_images, d] of every image under ``directory`` (clean-fid's folder walk)."""
    if not os.path.isdir(directory):
        raise ValueError(f"image folder {directory} not found")
    features = cleanfid.get_folder_features(directory, extractor.model, num_workers=num_workers,
                                            batch_size=batch_size, device=device, mode=FEATURE_MODE,
                                            custom_fn_resize=extractor.resize, verbose=False)
    if len(features) < 2:
        raise ValueError(f"image folder {directory} has {len(features)} images; FID and KID need at least 2")
    return features


def quality_metrics(images: str, reference: str, inception: FeatureExtractor | None,
                    clip: FeatureExtractor | None, device: torch.device, **loader) -> dict[str, float]:
    """FID and KID (with ``inception``) and CLIP-FID (with ``clip``) of ``images`` against
    ``reference``; ``loader``: batch_size, num_workers of the feature extraction."""
    figures = {}
    if inception is not None:
        generated, real = (folder_features(d, inception, device, **loader) for d in (images, reference))
        figures["fid"] = float(cleanfid.fid_from_feats(generated, real))
        figures["kid"] = float(cleanfid.kernel_distance(generated, real))
    if clip is not None:
        generated, real = (folder_features(d, clip, device, **loader) for d in (images, reference))
        figures["clip_fid"] = float(cleanfid.fid_from_feats(generated, real))
    return figures


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    parser.add_argument("-i", "--images", default="generated_images", help="generated images")
    parser.add_argument("-r", "--reference", required=True, help="reference images (e.g. real COCO images)")
    parser.add_argument("--metrics", nargs="+", choices=QUALITY_METRICS, default=list(QUALITY_METRICS),
                        help="figures to compute")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="images per feature batch")
    parser.add_argument("--num-workers", type=non_negative_int, default=NUM_WORKERS, help="data-loader processes")
    cli.add_clip_args(parser)
    cli.add_device_args(parser)
    cli.add_output_args(parser, f"<images>/{JSON_NAME}")
    args = parse(parser, argv)

    device = resolve_device(args.device)
    inception = inception_extractor(device) if {"fid", "kid"} & set(args.metrics) else None
    clip = clip_extractor(CLIPEmbedder(args.clip_model, device)) if "clip_fid" in args.metrics else None
    figures = quality_metrics(args.images, args.reference, inception, clip, device,
                              batch_size=args.batch_size, num_workers=args.num_workers)
    figures = {name: figures[name] for name in args.metrics}
    print(f"image quality of {args.images} against {args.reference}")
    for name, value in figures.items():
        print(f"{name:<9} {value:.5g}")
    payload = dict(metric="quality", images=args.images, reference=args.reference, clip_model=args.clip_model,
                   **figures)
    cli.write_json(cli.default_output(args, JSON_NAME), payload)
    return payload


if __name__ == "__main__":
    run(main)
