"""Image (and text) embedders of the metrics: SSCD, CLIP ViT-B/32, and a weight-free pixel stand-in.

Every image embedder maps a list of PIL images to a float tensor [n_images, dim] on the CPU.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms.functional import to_tensor

from utils.images import load_images
from utils.assets import SSCD_BASE, sscd_checkpoint
from utils.defaults import CLIP_MODEL, SSCD_CHECKPOINTS, SSCD_MODEL

logger = logging.getLogger(__name__)

# SSCD (SPEC §6; Pizzi et al. 2022, as used by the authors' metric scripts).
SSCD_SIZE = 320  # resize to 320x320, no crop (SPEC §6)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SSCD's input normalization (SPEC §6)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_SIZE = 32  # side of the pixel stand-in's thumbnails
EMBEDDERS = ("sscd", "pixel", "clip")


class SSCDEmbedder:
    """An SSCD TorchScript model: [n, 3, 320, 320] normalized images -> [n, 512] (``sscd_disc_mixup``)
    or [n, 1024] (``sscd_disc_large``). ``model``: a checkpoint name (its file in weights/) or a path."""

    name = "sscd"

    def __init__(self, model: str, device: torch.device):
        self.checkpoint, path = sscd_checkpoint(model)
        self.label = f"sscd ({self.checkpoint})"
        if not os.path.isfile(path):
            fetch = (f"fetch it with `python 0_fetch_assets.py {self.checkpoint}`" if self.checkpoint in SSCD_CHECKPOINTS
                     else f"download a checkpoint from {SSCD_BASE} (e.g. {SSCD_MODEL}.torchscript.pt)")
            raise ValueError(f"SSCD model {path} not found; {fetch} (facebookresearch/sscd-copy-detection), "
                             "or pass a TorchScript file with --sscd-model")
        try:
            self.model = torch.jit.load(path, map_location=device).eval()
        except RuntimeError as error:
            raise ValueError(f"cannot load SSCD model {path} as TorchScript: {str(error).splitlines()[0]}") from None
        self.device = device
        self.transform = transforms.Compose([
            transforms.Resize([SSCD_SIZE, SSCD_SIZE]),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)  # [n, 3, 320, 320]
        return self.model(batch).float().cpu()  # [n, 512]


class PixelEmbedder:
    """Weight-free stand-in for the built-in test bed and the tests: each image resized to
    32x32 RGB, flattened, centred (its mean subtracted) and L2-normalized, so the cosine
    similarity of two images is the correlation of their thumbnails. Not a copy detector."""

    name = label = "pixel"

    def __init__(self, size: int = PIXEL_SIZE):
        self.size = size

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        thumbnails = [to_tensor(image.resize((self.size, self.size), Image.BILINEAR)) for image in images]
        flat = torch.stack(thumbnails).flatten(1)  # [n, 3 * size * size]
        return F.normalize(flat - flat.mean(1, keepdim=True), dim=1)


class CLIPEmbedder:
    """CLIP through transformers (``CLIPModel``/``CLIPProcessor``) from the hub or a local folder:
    images -> [n, projection_dim], captions -> [n, projection_dim]."""

    name = "clip"

    def __init__(self, source: str, device: torch.device):
        self.label = f"clip ({source})"
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(source).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:  # hub, network and file errors alike end in one line
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ValueError(f"could not load CLIP model {source} ({first_line}); "
                             "pass a local folder of CLIPModel + CLIPProcessor with --clip-model") from None
        self.device = device
        self.image_size = self.model.config.vision_config.image_size  # 224 for ViT-B/32
        self.mean = torch.tensor(self.processor.image_processor.image_mean, device=device)[:, None, None]  # [3, 1, 1]
        self.std = torch.tensor(self.processor.image_processor.image_std, device=device)[:, None, None]

    @staticmethod
    def _pooled(output) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output is projected; 4.x a tensor.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, projection_dim] of resized images [n, 3, size, size] with values in [0, 255]."""
        normalized = (pixels.to(self.device).float() / 255 - self.mean) / self.std
        return self._pooled(self.model.get_image_features(pixel_values=normalized)).float().cpu()

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]  # [n, 3, s, s]
        return self._pooled(self.model.get_image_features(pixel_values=pixels.to(self.device))).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self._pooled(self.model.get_text_features(**tokens)).float().cpu()  # [n, projection_dim]


def image_embedder(name: str, device: torch.device, sscd_model: str = SSCD_MODEL, clip_model: str = CLIP_MODEL):
    """The embedder called ``name`` (one of ``EMBEDDERS``)."""
    if name == "sscd":
        return SSCDEmbedder(sscd_model, device)
    if name == "clip":
        return CLIPEmbedder(clip_model, device)
    if name == "pixel":
        return PixelEmbedder()
    raise ValueError(f"unknown embedder {name!r}; expected one of {EMBEDDERS}")


def embed_files(embedder, paths: list[str]) -> torch.Tensor:
    """Embeddings [len(paths), dim] of the image files."""
    return embedder(load_images(paths))
