"""Image (and text) embedders of the metrics: SSCD, CLIP ViT-B/32, and a weight-free pixel stand-in.

Every image embedder maps a list of PIL images to a float tensor [n_images, dim] on the CPU.
"""

from __future__ import annotations

import html
import logging
import os
import re

import torch
import torch.nn.functional as F
from ftfy import fix_text
from PIL import Image
from torchvision import transforms
from torchvision.transforms.functional import to_tensor

from utils.assets import SSCD_BASE, sscd_checkpoint
from utils.defaults import CLIP_MODEL, SSCD_CHECKPOINTS, SSCD_MODEL
from utils.images import load_images

logger = logging.getLogger(__name__)

# SSCD (SPEC §6; Pizzi et al. 2022, as used by the authors' metric scripts).
SSCD_SIZE = 320  # resize to 320x320, no crop (SPEC §6)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SSCD's input normalization (SPEC §6)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_SIZE = 32  # side of the pixel stand-in's thumbnails
# CLIP (the authors' metric scripts: clip.load("ViT-B/32"); clean-fid's CLIP-FID, cleanfid/clip_features.py).
# Images: shorter side resized to the model's size with PIL's bicubic filter, centre crop, these
# mean and std (openai/CLIP clip/clip.py ``_transform``; clean-fid normalizes with the same).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_CONTEXT_LENGTH = 77  # clip.tokenize: start token, caption tokens, end token, zeros
CLIP_PADDING_ID = 0  # clip.tokenize pads with zeros
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


def clip_caption(text: str) -> str:
    """A caption as OpenAI CLIP's tokenizer cleans it before BPE (clip/simple_tokenizer.py:
    ftfy, HTML entities unescaped twice, whitespace runs to one space, lower case)."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def clip_token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids [n, 77] of the captions as ``clip.tokenize`` lays them out, ``tokenizer``
    being CLIP's BPE (transformers). A caption longer than 77 tokens, which ``clip.tokenize``
    refuses, is cut as its ``truncate=True`` cuts: the first 76 tokens, then the end token
    (a warning names it)."""
    ids = torch.full((len(texts), CLIP_CONTEXT_LENGTH), CLIP_PADDING_ID, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = tokenizer(clip_caption(text)).input_ids  # [start, BPE tokens, end]
        if len(tokens) > CLIP_CONTEXT_LENGTH:
            logger.warning("caption of %d CLIP tokens cut to %d: %r", len(tokens), CLIP_CONTEXT_LENGTH, text)
            tokens = tokens[:CLIP_CONTEXT_LENGTH - 1] + tokens[-1:]
        ids[i, :len(tokens)] = torch.tensor(tokens)
    return ids


class CLIPEmbedder:
    """CLIP through transformers (``CLIPModel`` and its tokenizer) from the hub or a local folder:
    images -> [n, projection_dim], captions -> [n, projection_dim]. Images and captions reach
    the model as OpenAI's ``clip`` package prepares them (the authors' ``clip.load`` and
    ``clip.tokenize``), not as transformers' processor does."""

    name = "clip"

    def __init__(self, source: str, device: torch.device):
        self.label = f"clip ({source})"
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(source).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:  # hub, network and file errors alike end in one line
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ValueError(f"could not load CLIP model {source} ({first_line}); "
                             "pass a local folder of CLIPModel + its tokenizer with --clip-model") from None
        self.device = device
        self.image_size = self.model.config.vision_config.image_size  # 224 for ViT-B/32
        self.normalize = transforms.Normalize(CLIP_MEAN, CLIP_STD)
        self.transform = transforms.Compose([
            transforms.Resize(self.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            self.normalize,
        ])

    @staticmethod
    def _pooled(output) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output is projected; 4.x a tensor.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, projection_dim] of resized images [n, 3, size, size] with values in
        [0, 255] (clean-fid's CLIP features: divided by 255, then normalized)."""
        normalized = self.normalize(pixels.to(self.device).float() / 255)
        return self._pooled(self.model.get_image_features(pixel_values=normalized)).float().cpu()

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """What the image encoder receives: [n, 3, size, size], normalized. RGB images (as
        ``load_images`` reads them; ``clip`` converts to RGB after the crop, the same for RGB)."""
        return torch.stack([self.transform(image) for image in images])

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.pixels(images).to(self.device)  # [n, 3, size, size]
        return self._pooled(self.model.get_image_features(pixel_values=pixels)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        ids = clip_token_ids(self.tokenizer, texts).to(self.device)  # no attention mask: as clip, causal only
        return self._pooled(self.model.get_text_features(input_ids=ids)).float().cpu()  # [n, projection_dim]


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
