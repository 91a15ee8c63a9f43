"""What reaches each metric's model is what the authors' code feeds it, pixel for pixel and
token for token: A_CLIP as OpenAI's ``clip`` package prepares images and captions (the authors'
metrics/compute_prompt_alignment.py), SSCD as their metric scripts resize and normalize,
FID/KID and CLIP-FID as clean-fid's own feature extractors do. Each reference is restated from
the authors' (or clean-fid's) code in benchmarks/preprocessing.py, which measures the same on
the demo's images; the models are seeded stand-ins."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.preprocessing import (Recorder, authors_clip_preprocess, authors_sscd_preprocess, clean_fid_inputs,
                                      clean_resize, clip_fid_normalize, clip_fid_resize, received)
from metrics import quality
from metrics.embedders import CLIPEmbedder, SSCDEmbedder, clip_token_ids
from testbed import rehearsal
from utils.images import load_images

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


# A_CLIP: openai/CLIP clip.load's preprocess and clip.tokenize.

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

    captions = ["The Famous  Cat\tPoster", "Tom &amp;amp; Jerry &quot;Movie&quot;", "cafÃ© au lait",
                "a &lt;b&gt; c <i>", " ".join(["word"] * 80)]
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
    expected = torch.stack([authors_sscd_preprocess()(Image.open(path).convert("RGB")) for path in image_files])
    assert (embedder(load_images(image_files)) - expected.flatten(1)).abs().max().item() == 0


# FID/KID and CLIP-FID: clean-fid's compute_fid / compute_kid (mode "clean").

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
    assert (pixels - clean_fid_inputs(image_files, clean_resize)).abs().max().item() == 0


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_clip_fid_images_are_clean_fids_own(image_folder, image_files, clip_b32):
    """clean-fid's CLIP_fx: the resized uint8 images times 255, divided by 255, normalized."""
    embedder = CLIPEmbedder(clip_b32, torch.device("cpu"))
    pixels = received(embedder.model.vision_model, lambda: quality.folder_features(
        image_folder, quality.clip_extractor(embedder), torch.device("cpu"), batch_size=2, num_workers=0))
    expected = clip_fid_normalize(clean_fid_inputs(image_files, clip_fid_resize))
    assert (pixels - expected).abs().max().item() == 0
