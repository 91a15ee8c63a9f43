"""metrics/: known answers of the maths, image pairing and errors, and every command end to end
on small synthetic images with weight-free or tiny stand-in models."""

import json
import os
import subprocess
import sys
import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from metrics import alignment, core, detection, diversity, plots, quality, sscd_gen, sscd_orig
from metrics.embedders import CLIPEmbedder, PixelEmbedder, SSCDEmbedder, embed_files
from testbed.components import build_tokenizer
from tests.conftest import write_prompt_file
from utils.files import COST_COLUMNS, RESULT_COLUMNS
from utils.generation import image_path
from utils.images import generated_images, original_images, paired_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
CAPTIONS = ["a red cat", "a blue dog", "the green house"]
TYPES = ["VM", "TM", "VM"]


def pattern(seed: int) -> np.ndarray:
    """A distinct smooth uint8 [32, 32, 3] image per seed (4x4 noise upscaled, so JPEG keeps it)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def write_images(directory, seeds: dict[int, list[int]]) -> str:
    """img_PPPP_SS.jpg of pattern(seed) for each prompt's list of seeds."""
    os.makedirs(directory, exist_ok=True)
    for prompt, prompt_seeds in seeds.items():
        for j, seed in enumerate(prompt_seeds):
            Image.fromarray(pattern(seed)).save(image_path(str(directory), prompt, j))
    return str(directory)


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def prompts(tmp_path) -> str:
    return write_prompt_file(tmp_path / "memorized.csv", CAPTIONS, TYPES)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random tiny CLIPModel + tokenizer folder (what --clip-model takes)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = str(tmp_path_factory.mktemp("clip"))
    tokenizer = build_tokenizer(" ".join(CAPTIONS).split(), os.path.join(directory, "tokenizer"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=16, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


# Maths (metrics/core.py).

def test_similarities_of_identical_embeddings_are_one():
    x = torch.randn(10, 6)
    torch.testing.assert_close(core.cosine_matrix(x, x).diagonal(), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(core.paired_cosine(x, 3 * x), torch.ones(10, dtype=torch.float64))
    assert core.cosine_matrix(x, x[:4]).shape == (10, 4)
    assert core.diversity_score(x[[0] * 10]) == pytest.approx(1.0)
    assert core.sscd_orig_scores(x[0], x[[0, 1, 2]])["max"] == pytest.approx(1.0)


def test_upper_triangle_has_45_pairs_for_10_images():
    matrix = torch.arange(100.0).reshape(10, 10)
    pairs = core.upper_triangle(matrix)
    assert len(pairs) == 45 and pairs[:3].tolist() == [1.0, 2.0, 3.0]


def test_median_and_median_absolute_deviation():
    assert core.median_mad(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])) == (3.0, 1.0)
    # even counts take the lower middle value, as the authors' torch.median
    assert core.median_mad(torch.tensor([1.0, 2.0, 3.0, 4.0])) == (2.0, 1.0)


def test_auroc_of_separable_identical_and_reversed_scores():
    low, high = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.6, 0.7, 0.8, 0.9])
    assert core.auroc(high, low) == 1.0
    assert core.auroc(low, low) == 0.5
    assert core.auroc(low, high) == 0.0


def test_tpr_at_one_percent_fpr_allows_one_false_positive_in_100():
    unmemorized = torch.arange(100) / 100  # 0.00 .. 0.99
    memorized = torch.tensor([0.985, 0.995, 0.5, 2.0])
    # threshold 0.985: one non-memorized score (0.99) above it (1 % FPR), three memorized ones
    assert core.tpr_at_fpr(memorized, unmemorized) == 0.75
    assert core.tpr_at_fpr(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0


def test_accuracy_at_a_threshold():
    memorized, unmemorized = torch.tensor([0.6, 0.7, 0.4]), torch.tensor([0.1, 0.55, 0.5])
    assert core.accuracy_at(memorized, unmemorized, 0.5) == 4 / 6  # 0.5 itself is not above 0.5
    figures = core.detection_metrics(memorized, unmemorized, 0.58)
    assert figures["accuracy_at_threshold"] == 5 / 6 and figures["memorized"] == 3


def test_summary_splits_vm_and_tm():
    summary = core.summarize({0: 0.9, 1: 0.1, 2: 0.7, 5: 0.8}, {0: "VM", 1: "TM", 2: "VM", 5: "N"})
    assert summary["overall"] == dict(median=0.7, mad=pytest.approx(0.1), n=4)
    assert summary["VM"] == dict(median=0.7, mad=0.0, n=2)  # lower median of |0.2|, |0.0|
    assert summary["TM"] == dict(median=0.1, mad=0.0, n=1)
    assert list(core.summarize({0: 1.0}, {})) == ["overall"]


# Image folders and embedders.

def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_generated_images_are_grouped_by_prompt_and_a_gap_is_named(tmp_path):
    directory = write_images(tmp_path / "a", {0: [1, 2, 3], 7: [4, 5, 6]})
    Image.fromarray(pattern(0)).save(tmp_path / "a" / "notes.png")  # other files are ignored
    images = generated_images(directory)
    assert list(images) == [0, 7] and images[7][2] == image_path(directory, 7, 2)
    os.remove(image_path(directory, 7, 1))
    with pytest.raises(ValueError) as error:
        generated_images(directory)
    assert one_line(error) == f"{image_path(directory, 7, 1)} missing (other prompts have 3 samples)"
    with pytest.raises(ValueError, match="image folder .*nowhere not found"):
        generated_images(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no images named img_PPPP_SS.jpg"):
        generated_images(str(tmp_path))


def test_paired_folders_must_hold_the_same_files(tmp_path):
    a = write_images(tmp_path / "a", {0: [1, 2], 1: [3, 4]})
    b = write_images(tmp_path / "b", {0: [1, 2]})
    with pytest.raises(ValueError) as error:
        paired_images(a, b)
    name = "img_0001_00.jpg"
    assert one_line(error) == f"{os.path.join(a, name)} has no counterpart {os.path.join(b, name)}"
    write_images(tmp_path / "b", {1: [3, 4]})
    assert paired_images(a, b)[1][1] == (image_path(a, 1, 1), image_path(b, 1, 1))


def test_original_images_in_both_naming_schemes(tmp_path):
    for name in ("0000.png", "0002_laion_caption.jpg", "readme.txt", "img_0001_00.jpg"):
        (tmp_path / name).write_bytes(b"")
    expected = {0: str(tmp_path / "0000.png"), 2: str(tmp_path / "0002_laion_caption.jpg")}
    assert original_images(str(tmp_path)) == expected
    (tmp_path / "0000_again.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="two original images for prompt 0"):
        original_images(str(tmp_path))


def test_pixel_embedder_scores_identical_images_one(tmp_path):
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2)):
        Image.fromarray(pattern(seed)).save(path)
    embeddings = embed_files(PixelEmbedder(), paths)  # [3, 3 * 32 * 32]
    similarities = core.cosine_matrix(embeddings, embeddings)
    assert similarities[0, 1].item() == pytest.approx(1.0) and similarities[0, 2].item() < 0.5
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        (tmp_path / "broken.jpg").write_bytes(b"no image")
        embed_files(PixelEmbedder(), [str(tmp_path / "broken.jpg")])


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_sscd_model_file_missing_or_loaded(tmp_path):
    with pytest.raises(ValueError) as error:
        SSCDEmbedder(str(tmp_path / "sscd_disc_mixup.torchscript.pt"), torch.device("cpu"))
    assert "facebookresearch/sscd-copy-detection" in one_line(error)
    stand_in = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # [n, 3, 320, 320] -> [n, 12]
    torch.jit.script(stand_in).save(str(tmp_path / "sscd.pt"))
    embedder = SSCDEmbedder(str(tmp_path / "sscd.pt"), torch.device("cpu"))
    image = Image.fromarray(pattern(0))
    assert embedder.transform(image).shape == (3, 320, 320)
    assert embedder([image, image]).shape == (2, 12)


def test_clip_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as error:
        CLIPEmbedder(str(tmp_path / "no_clip"), torch.device("cpu"))
    assert one_line(error).startswith(f"could not load CLIP model {tmp_path / 'no_clip'}")


# Commands end to end.

def test_sscd_orig_skips_prompts_without_original(tmp_path, prompts, capsys):
    images = write_images(tmp_path / "gen", {0: [10, 11, 12], 1: [20, 21, 22], 2: [30, 31, 32]})
    originals = tmp_path / "orig"
    originals.mkdir()
    Image.fromarray(pattern(11)).save(originals / "0000.png")  # a copy of image 1 of prompt 0
    Image.fromarray(pattern(99)).save(originals / "0001_caption.jpg")
    result = sscd_orig.main(["-i", images, "-r", str(originals), "-p", prompts, "--embedder", "pixel"])
    assert result["skipped_prompts"] == [2]
    assert result["per_prompt"]["0"]["max"] == pytest.approx(1.0, abs=0.02)
    assert result["per_prompt"]["1"]["max"] < 0.9
    assert set(result["summary"]["max"]) == {"overall", "VM", "TM"}
    assert result["summary"]["max"]["VM"]["n"] == 1
    assert read_json(os.path.join(images, "sscd_orig.json")) == result
    assert "1 without an original image skipped" in capsys.readouterr().out


def test_sscd_gen_pairs_images_by_name_not_order(tmp_path):
    deactivated = write_images(tmp_path / "nemo", {0: [1, 2, 3, 4], 1: [5, 6, 7, 8]})
    same = write_images(tmp_path / "same", {0: [1, 2, 3, 4], 1: [5, 6, 7, 8]})
    permuted = write_images(tmp_path / "permuted", {0: [2, 3, 4, 1], 1: [5, 6, 7, 8]})
    result = sscd_gen.main(["-i", deactivated, "-r", same, "--embedder", "pixel"])
    assert result["summary"]["median"]["overall"]["median"] == pytest.approx(1.0, abs=1e-3)
    result = sscd_gen.main(["-i", deactivated, "-r", permuted, "--embedder", "pixel",
                            "-o", str(tmp_path / "out.json")])
    assert result["per_prompt"]["0"]["median"] < 0.5
    assert result["per_prompt"]["1"]["median"] == pytest.approx(1.0, abs=1e-3)
    assert os.path.exists(tmp_path / "out.json")


def test_sscd_gen_mismatch_is_a_one_line_command_error(tmp_path):
    a = write_images(tmp_path / "a", {0: [1, 2]})
    b = write_images(tmp_path / "b", {0: [1]})
    run = subprocess.run([sys.executable, "-m", "metrics.sscd_gen", "-i", a, "-r", b, "--embedder", "pixel"],
                         cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"sscd_gen.py: error: {image_path(a, 0, 1)} has no counterpart {image_path(b, 0, 1)}")


def test_diversity_of_identical_and_distinct_generations(tmp_path, prompts):
    images = write_images(tmp_path / "gen", {0: [1] * 5, 1: [2, 3, 4, 5, 6]})
    result = diversity.main(["-i", images, "-p", prompts, "--embedder", "pixel"])
    assert result["per_prompt"]["0"]["median"] == pytest.approx(1.0, abs=1e-3)
    assert result["per_prompt"]["1"]["median"] < 0.5
    assert result["summary"]["median"]["TM"]["n"] == 1
    write_images(tmp_path / "one", {0: [1]})
    with pytest.raises(ValueError, match="at least 2 images per prompt"):
        diversity.main(["-i", str(tmp_path / "one"), "--embedder", "pixel"])


def test_alignment_with_a_tiny_clip_model(tmp_path, prompts, tiny_clip):
    images = write_images(tmp_path / "gen", {0: [1, 2], 2: [3, 4]})
    result = alignment.main(["-i", images, "-p", prompts, "--clip-model", tiny_clip])
    assert set(result["per_prompt"]) == {"0", "2"} and set(result["summary"]["median"]) == {"overall", "VM"}
    embedder = CLIPEmbedder(tiny_clip, torch.device("cpu"))
    paths = generated_images(images)[2]
    expected = core.cosine_matrix(embedder.embed_texts([CAPTIONS[2]]), embed_files(embedder, paths))[0]
    assert result["per_prompt"]["2"]["median"] == pytest.approx(expected.min().item())  # lower median of 2
    write_images(tmp_path / "gen", {5: [1, 2]})
    with pytest.raises(ValueError, match="images of prompt 5 but prompt file .* has 3 rows"):
        alignment.main(["-i", images, "-p", prompts, "--clip-model", tiny_clip])


class TinyFeatures(torch.nn.Module):
    """Stand-in feature model: [n, 3, h, w] in [0, 255] -> [n, 12] (2x2 average colours)."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # inside clean-fid
def test_quality_with_small_feature_extractors(tmp_path, tiny_clip, monkeypatch):
    generated = write_images(tmp_path / "gen", {p: [p * 10 + j for j in range(4)] for p in range(4)})
    copy = write_images(tmp_path / "copy", {p: [p * 10 + j for j in range(4)] for p in range(4)})
    other = write_images(tmp_path / "other", {p: [100 + p * 10 + j for j in range(4)] for p in range(4)})
    extractor = quality.FeatureExtractor(TinyFeatures())
    loader = dict(batch_size=8, num_workers=0)
    same = quality.quality_metrics(generated, copy, extractor, None, torch.device("cpu"), **loader)
    different = quality.quality_metrics(generated, other, extractor, None, torch.device("cpu"), **loader)
    assert same["fid"] == pytest.approx(0.0, abs=1e-4) and different["fid"] > 1e-4
    assert set(different) == {"fid", "kid"}

    monkeypatch.setattr(quality, "inception_extractor", lambda device: extractor)
    result = quality.main(["-i", generated, "-r", other, "--clip-model", tiny_clip, "--num-workers", "0"])
    assert set(result) >= {"fid", "kid", "clip_fid"} and result["fid"] == pytest.approx(different["fid"])
    assert read_json(os.path.join(generated, "quality.json")) == result


def test_quality_without_inception_weights_is_a_one_line_error(tmp_path, monkeypatch):
    import cleanfid.inception_torchscript

    def offline(fpath):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", offline)
    with pytest.raises(ValueError) as error:
        quality.main(["-i", str(tmp_path), "-r", str(tmp_path), "--metrics", "fid", "--device", "cpu"])
    assert "inception-2015-12-05.pt are missing and could not be downloaded" in one_line(error)


def write_scores(path, captions, scores) -> str:
    pd.DataFrame({"Caption": captions, "Memorization Score": scores, "Sample Scores": "[]"}).to_csv(path, sep=";")
    return str(path)


@pytest.fixture
def score_files(tmp_path) -> dict:
    unmemorized = write_scores(tmp_path / "unmemorized_scores.csv", [f"u{i}" for i in range(6)],
                               [0.1, 0.2, 0.3, 0.35, 0.4, 0.6])
    with open(unmemorized + ".threshold.json", "w") as f:
        json.dump(dict(threshold=0.45), f)
    memorized = write_scores(tmp_path / "memorized_scores.csv", CAPTIONS, [0.9, 0.3, 0.8])
    return dict(memorized=memorized, unmemorized=unmemorized)


def test_detection_overall_and_vm_only(tmp_path, score_files, prompts, capsys):
    result = detection.main(["-m", score_files["memorized"], "-u", score_files["unmemorized"], "-p", prompts])
    overall, vm = result["summary"]["overall"], result["summary"]["VM"]
    assert result["threshold"] == 0.45
    assert vm["auroc"] == 1.0 and vm["memorized"] == 2 and vm["tpr_at_1_fpr"] == 1.0
    assert overall["auroc"] == pytest.approx((6 + 6 + 2.5) / 18)  # 0.3 beats 2 of 6, ties with 1
    assert overall["accuracy_at_threshold"] == pytest.approx(7 / 9)
    assert overall["accuracy_at_0_5"] == pytest.approx(7 / 9)
    assert read_json(tmp_path / "detection.json") == result
    assert "VM" in capsys.readouterr().out
    result = detection.main(["-m", score_files["memorized"], "-u", score_files["unmemorized"], "--threshold", "0.2",
                             "-o", str(tmp_path / "d.json")])
    assert list(result["summary"]) == ["overall"] and result["threshold"] == 0.2
    os.remove(score_files["unmemorized"] + ".threshold.json")
    with pytest.raises(ValueError, match="no threshold: .*unmemorized_scores.csv.threshold.json not found"):
        detection.main(["-m", score_files["memorized"], "-u", score_files["unmemorized"]])
    other = write_prompt_file(tmp_path / "other.csv", ["x", "y", "z"], TYPES)
    with pytest.raises(ValueError, match="memorized_scores.csv row 0 is 'a red cat' but prompt file"):
        detection.main(["-m", score_files["memorized"], "-u", score_files["unmemorized"], "-p", other,
                        "--threshold", "0.5"])


def test_plots_write_pngs(tmp_path, score_files, prompts):
    rows = [[c, "", str([[1], [], [2, 3], [], [], [], [4]]), 0.3, str([[1], [], [2], [], [], [], []]), 0.4,
             1.0, 10, 3, 0] for c in CAPTIONS]
    results = tmp_path / "results.csv"
    pd.DataFrame(rows, columns=RESULT_COLUMNS + COST_COLUMNS).to_csv(results, sep=";")
    written = plots.main(["-m", score_files["memorized"], "-u", score_files["unmemorized"], "--results", str(results),
                          "-p", prompts, "-o", str(tmp_path / "plots")])
    assert [os.path.basename(p) for p in written] == ["memorization_scores.png", "neurons_per_prompt.png",
                                                      "neurons_per_layer.png"]
    assert all(Image.open(p).size[0] > 100 for p in written)
    per_prompt, per_layer = plots.neuron_counts([[[1], [], [2], [], [], [], []]] * 3, TYPES)
    assert per_prompt["VM"].tolist() == [2, 2] and per_layer["TM"].tolist() == [1, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("module", [sscd_orig, sscd_gen, diversity, alignment, quality, detection, plots])
def test_help_shows_defaults(module, capsys):
    with pytest.raises(SystemExit) as exit_code:
        module.main(["--help"])
    assert exit_code.value.code == 0 and "(default:" in capsys.readouterr().out
