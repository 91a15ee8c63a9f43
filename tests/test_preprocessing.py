"""What reaches each metric's model is what the authors' code feeds it, pixel for pixel and
token for token: A_CLIP as OpenAI's ``clip`` package prepares images and captions (the authors'
metrics/compute_prompt_alignment.py), SSCD as their metric scripts resize and normalize,
FID/KID and CLIP-FID as clean-fid's own feature extractors do. Each reference is restated here
from the authors' (or clean-fid's) code; the models are seeded stand-ins."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from metrics import quality
from metrics.embedders import CLIPEmbedder, SSCDEmbedder, clip_token_ids
from metrics.images import load_images
from testbed import rehearsal

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/CLIP clip/clip.py _transform
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Image sizes (width, height): SD v1 and SD 2 outputs, landscape and portrait with odd crops.
SIZES = [(512, 512), (768, 768), (640, 427), (333, 517)]


def photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth random image with edges (noise upscaled bilinearly, plus a sharp band)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR)).copy()
    pixels[height // 3: height // 3 + 7] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """JPEGs as script 4 writes them, plus a greyscale one (read as RGB by the suite)."""
    directory = tmp_path_factory.mktemp("images")
    paths = []
    for i, (width, height) in enumerate(SIZES):
        paths.append(str(directory / f"img_{i:04d}_00.jpg"))
        photo(width, height, i).save(paths[-1])
    paths.append(str(directory / f"img_{len(SIZES):04d}_00.jpg"))
    photo(300, 200, 9, mode="L").save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def clip_b32(tmp_path_factory) -> str:
    """A seeded narrow CLIPModel with ViT-B/32's image geometry (224 px, 32 px patches), the
    real checkpoint's text config ids and CLIP's real BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    directory = str(tmp_path_factory.mktemp("clip-b32"))
    tokenizer = rehearsal.build_tokenizer(directory, rehearsal.SD14_TOKENIZER_CONFIG)
    text = {**rehearsal.CLIP_B32_TEXT_CONFIG, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1}
    vision = {**rehearsal.CLIP_B32_VISION_CONFIG, "hidden_size": 16, "intermediate_size": 32,
              "num_attention_heads": 2, "num_hidden_layers": 1}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def received(module: torch.nn.Module, call) -> torch.Tensor:
    """The first tensor argument of ``module``'s forward during ``call()``."""
    seen = []

    def keep(_module, args, kwargs):
        seen.append(args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v)))

    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return torch.cat(seen)


# A_CLIP: openai/CLIP clip.load's preprocess and clip.tokenize.

def authors_clip_preprocess(size: int):
    """clip/clip.py ``_transform(n_px)``, which ``clip.load`` returns and the authors apply to
    ``Image.open(path)``."""
    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        lambda image: image.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def test_clip_images_reach_the_model_as_clip_load_prepares_them(clip_b32, image_files):
    embedder = CLIPEmbedder(clip_b32, torch.device("cpu"))
    pixels = received(embedder.model.vision_model, lambda: embedder(load_images(image_files)))
    preprocess = authors_clip_preprocess(224)
    expected = torch.stack([preprocess(Image.open(path)) for path in image_files])  # [5, 3, 224, 224]
    assert pixels.shape == (len(image_files), 3, 224, 224)
    assert (pixels - expected).abs().max().item() == 0


def test_clip_captions_are_tokenized_as_clip_tokenize(clip_b32, caplog):
    """Token ids as OpenAI's tokenizer gives them (open_clip's SimpleTokenizer is its code,
    with the same cleaning: ftfy, HTML entities twice, whitespace, lower case), and the text
    embedding read at the end token, as ``encode_text`` reads it."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    captions = ["The Famous  Cat\tPoster", "Tom &amp;amp; Jerry &quot;Movie&quot;", "cafÃ© au lait", "a &lt;b&gt; c <i>",
                " ".join(["word"] * 80)]
    reference = SimpleTokenizer()(captions, context_length=77)  # long captions cut as clip's truncate=True
    tokenizer = CLIPTokenizer.from_pretrained(clip_b32)
    ids = clip_token_ids(tokenizer, captions)
    assert torch.equal(ids, reference.long())
    assert "caption of 82 CLIP tokens cut to 77" in caplog.text
    # transformers' own cleaning keeps HTML entities and mojibake
    assert [tokenizer(c).input_ids == r[r > 0].tolist() for c, r in zip(captions[:4], reference)] == [
        True, False, False, False]

    embedder = CLIPEmbedder(clip_b32, torch.device("cpu"))
    model = embedder.model
    with torch.no_grad():
        hidden = model.text_model(input_ids=reference.long()).last_hidden_state  # [5, 77, width]
        expected = model.text_projection(hidden[torch.arange(5), reference.argmax(-1)])  # at the end token
    torch.testing.assert_close(embedder.embed_texts(captions), expected, rtol=0, atol=0)


# SSCD: the authors' metrics/compute_sscd_*.py and compute_diversity.py.

def test_sscd_images_reach_the_model_as_the_authors_scripts_prepare_them(tmp_path, image_files):
    identity = torch.jit.script(torch.nn.Flatten())  # its embedding is the pixels it gets
    identity.save(str(tmp_path / "identity.pt"))
    embedder = SSCDEmbedder(str(tmp_path / "identity.pt"), torch.device("cpu"))
    skew_320 = transforms.Compose([
        transforms.Resize([320, 320]),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    expected = torch.stack([skew_320(Image.open(path).convert("RGB")) for path in image_files])
    assert (embedder(load_images(image_files)) - expected.flatten(1)).abs().max().item() == 0


# FID/KID and CLIP-FID: clean-fid's compute_fid / compute_kid (mode "clean").

def clean_fid_folder(paths: list[str], resize) -> torch.Tensor:
    """What clean-fid's ResizeDataset hands its feature model for each file (sorted, as its
    folder walk): the RGB array, resized, uint8 scaled by ToTensor and multiplied by 255."""
    batch = []
    for path in sorted(paths):
        resized = resize(np.array(Image.open(path).convert("RGB")))
        tensor = transforms.ToTensor()(np.array(resized))
        batch.append(tensor * 255 if resized.dtype == np.uint8 else tensor)
    return torch.stack(batch)


def clean_resize(image: np.ndarray) -> np.ndarray:
    """cleanfid/resize.py ``build_resizer("clean")``: each channel as a float image, PIL
    bicubic to 299 x 299, clipped to [0, 255]."""
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                           .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
    return np.stack(channels, axis=2)


def clip_fid_resize(image: np.ndarray) -> np.ndarray:
    """cleanfid/clip_features.py ``img_preprocess_clip``."""
    resized = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                  transforms.CenterCrop(224)])(Image.fromarray(image.astype(np.uint8)).convert("RGB"))
    return np.asarray(resized).clip(0, 255).astype(np.uint8)


class Recorder(torch.nn.Module):
    """A feature model that keeps what it is given and returns its mean colour: [n, 3]."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return x.mean((2, 3))


@pytest.fixture
def image_folder(tmp_path, image_files) -> str:
    for path in image_files:
        os.symlink(path, tmp_path / os.path.basename(path))
    return str(tmp_path)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # inside clean-fid
def test_inception_images_are_clean_fids_own(image_folder, image_files):
    recorder = Recorder()
    quality.folder_features(image_folder, quality.FeatureExtractor(recorder), torch.device("cpu"),
                            batch_size=2, num_workers=0)
    pixels = torch.cat(recorder.inputs)
    assert pixels.shape == (len(image_files), 3, 299, 299)
    assert (pixels - clean_fid_folder(image_files, clean_resize)).abs().max().item() == 0


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_clip_fid_images_are_clean_fids_own(image_folder, image_files, clip_b32):
    """clean-fid's CLIP_fx: the resized uint8 images times 255, divided by 255, normalized."""
    embedder = CLIPEmbedder(clip_b32, torch.device("cpu"))
    pixels = received(embedder.model.vision_model, lambda: quality.folder_features(
        image_folder, quality.clip_extractor(embedder), torch.device("cpu"), batch_size=2, num_workers=0))
    expected = transforms.Normalize(CLIP_MEAN, CLIP_STD)(clean_fid_folder(image_files, clip_fid_resize) / 255.0)
    assert (pixels - expected).abs().max().item() == 0
