"""fp16, the suite's CUDA dtype, run on the CPU: scripts 3 and 4 on the test bed against
fp32, and the gradient methods (Wen's adjustment, the Dori attack, adversarial fine-tuning
under autocast) without NaN.

fp16 runs on the CPU about 3.5x slower than fp32 on the test bed, so script 3 keeps 2 seeds of
2 prompts (BENCHMARKS.md gives the time).
"""

import importlib
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import testbed
from utils.diffusion import encode_prompts
from utils.files import read_threshold
from utils.generation import generation_latents, image_path
from utils.methods.dori import attack, finetuning
from utils.methods.wen import noise_magnitude as wen
from utils.models import load_pipeline, resolve_dtype

PROMPTS = 2  # the first memorized prompts of the test bed
# fp16 runs on the CPU far slower than fp32: 2 seeds per prompt (the same flags in both dtypes).
SCRIPT3_FLAGS = ["--samples_per_prompt", "2"]
DTYPES = ("float32", "float16")


def test_dtype_flag_resolves_auto_by_device():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("float8", torch.device("cpu"))


@pytest.fixture(scope="module")
def localized(tmp_path_factory) -> dict[str, str]:
    """Script 3 on the test bed's first memorized prompts, once per dtype: their results files."""
    folder = tmp_path_factory.mktemp("precision")
    threshold = read_threshold(os.path.join(testbed.TESTBED_DIR, "threshold.json"))
    files = {}
    for dtype in DTYPES:
        output = str(folder / f"results_{dtype}.csv")
        importlib.import_module("3_detect_memorized_neurons").main([
            "-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "-o", output, "--limit", str(PROMPTS),
            "--statistics", os.path.join(testbed.TESTBED_DIR, "statistics.pt"), "--memorization_threshold",
            str(threshold), "--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE), "--dtype", dtype, "--device", "cpu", *SCRIPT3_FLAGS])
        files[dtype] = output
    return files


def neuron_sets(frame: pd.DataFrame, column: str) -> list[set]:
    return [{(layer, n) for layer, indices in enumerate(cell) for n in indices} for cell in frame[column].map(json.loads)]


def test_script3_in_float16_finds_the_float32_neurons(localized):
    """The same initial neurons; refined sets that share most neurons (fp16 rounding moves
    scores near tau_mem by ~1e-3, which can flip a refinement decision)."""
    full, half = (pd.read_csv(localized[dtype], sep=";") for dtype in DTYPES)
    assert len(full) == len(half) == PROMPTS
    for column in ("Initial SSIM", "Refined SSIM"):
        assert np.isfinite(half[column]).all()
        assert np.allclose(half[column], full[column], atol=0.05), (column, half[column], full[column])
    differences = []
    for prompt, (a, b) in enumerate(zip(neuron_sets(full, "Refined Neurons"), neuron_sets(half, "Refined Neurons"))):
        if a != b:
            differences.append(f"prompt {prompt}: only fp32 {sorted(a - b)}, only fp16 {sorted(b - a)}")
        assert len(a & b) >= 0.5 * max(len(a), len(b)), differences
    assert neuron_sets(full, "Initial Neurons") == neuron_sets(half, "Initial Neurons")
    print("refined neurons, fp16 vs fp32:", "; ".join(differences) or "identical")


def test_script4_in_float16_draws_the_float32_images(localized, tmp_path):
    """The first prompt with its fp32 refined neurons off, 10 DDIM steps, in each dtype."""
    results = localized["float32"]
    images = {}
    for dtype in DTYPES:
        output = tmp_path / dtype
        importlib.import_module("4_generate_images").main([
            "-v", testbed.MODEL_DIR, "-f", results,
            "-d", testbed.MEMORIZED_PROMPTS, "-o", str(output), "--refined_neurons", "--limit", "1", "-n", "1",
            "--steps", "10", "--dtype", dtype, "--device", "cpu"])
        images[dtype] = np.asarray(Image.open(image_path(str(output), 0, 0)), dtype=np.float32)
    assert images["float16"].std() > 5  # not a blank (NaN-decoded) image
    assert np.abs(images["float16"] - images["float32"]).mean() < 8, "fp16 images drift from fp32"


@pytest.fixture(scope="module")
def half_pipe():
    return load_pipeline(testbed.MODEL_DIR, torch.device("cpu"), torch.float16)


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def test_wen_adjustment_and_dori_attack_are_finite_in_float16(half_pipe):
    embedding = encode_prompts(half_pipe.tokenizer, half_pipe.text_encoder, ["a photo of a famous cat"])
    latents = generation_latents(half_pipe.unet, num_samples=2)
    adjusted = wen.adjust_embedding(half_pipe, embedding, latents, max_iterations=2, target_loss=0.0)
    assert finite(adjusted.losses) and torch.isfinite(adjusted.embedding).all()
    assert not torch.equal(adjusted.embedding, embedding.float())
    target = attack.image_latents(half_pipe, [Image.new("RGB", (48, 48), (200, 30, 30))])
    found = attack.attack(half_pipe, target, embedding, steps=2, batch=2)
    assert finite(found.losses) and torch.isfinite(found.embedding).all()
    assert not torch.equal(found.embedding, embedding.float())


def test_adversarial_finetuning_under_float16_autocast_is_finite(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, torch.device("cpu"), torch.float32)
    embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a red cat"])
    latent = attack.image_latents(pipe, [Image.new("RGB", (48, 48), (200, 30, 30))])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    utility = lambda generator: (torch.randn(2, *latent.shape[1:], generator=generator), embedding.expand(2, -1, -1))
    history = finetuning.adversarial_finetune(pipe, [finetuning.FinetuneTarget(latent, embedding, torch.zeros_like(latent))],
                                        utility, epochs=1, attack_steps=2, attack_batch=2, learning_rate=1e-3,
                                        compute_dtype=torch.float16)
    assert len(history) == 1 and finite([history[0]["adversarial_loss"], history[0]["utility_loss"]])
    weights = pipe.unet.state_dict()
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights.values())
    assert any(not torch.equal(before[k], weights[k]) for k in before)
