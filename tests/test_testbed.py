"""The shipped test bed memorizes, and NeMo finds and removes it (reduced end to end)."""

import importlib
import json
import os

import pandas as pd
import pytest
import torch

import testbed
from testbed.table1 import ssim_to_original
from utils.files import read_prompts
from utils.generation import generate_prompt_images
from utils.layers import count_neurons, value_layers
from utils.models import load_pipeline
from utils.noise import initial_latents, latent_shape, prompt_noise_difference
from utils.score import memorization_score

KERNEL = ["--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE)]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(testbed.MODEL_DIR, torch.device("cpu"))


@pytest.fixture(scope="module")
def threshold():
    return json.load(open(os.path.join(testbed.TESTBED_DIR, "threshold.json")))["threshold"]


def test_shipped_model_loads_with_seven_value_layers(pipe):
    assert len(value_layers(pipe.unet)) == 7 and pipe.unet.config.sample_size == 24


def test_memorized_prompt_is_detected(pipe, threshold):
    layers = value_layers(pipe.unet)
    latents = initial_latents(1, 10, latent_shape(pipe.unet))
    score = lambda caption: memorization_score(prompt_noise_difference(pipe, layers, caption)(latents)[0],
                                               testbed.SSIM_KERNEL_SIZE)
    vm = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    unmemorized = read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"][:3]
    assert score(vm) > threshold > max(score(c) for c in unmemorized)


def test_memorized_prompt_is_localized_and_mitigated(pipe, threshold, tmp_path):
    results = str(tmp_path / "results.csv")
    importlib.import_module("3_detect_memorized_neurons").main([
        "-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "-o", results, "--limit", "1",
        "--statistics", os.path.join(testbed.TESTBED_DIR, "statistics.pt"),
        "--memorization_threshold", str(threshold), *KERNEL])
    row = pd.read_csv(results, sep=";").iloc[0]
    neurons = json.loads(row["Refined Neurons"])
    assert 0 < count_neurons(neurons) and row["Refined SSIM"] <= threshold
    caption = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    original = os.path.join(testbed.ORIGINALS_DIR, "0000.png")
    similarity = {}
    for name, blocked in (("plain", None), ("nemo", neurons)):
        paths = []
        for j, image in enumerate(generate_prompt_images(pipe, caption, blocked, num_samples=4, steps=20,
                                                         batch_size=4)):
            paths.append(str(tmp_path / f"{name}_{j}.png"))
            image.save(paths[-1])
        similarity[name] = ssim_to_original(original, paths).median().item()
    assert similarity["plain"] > 0.5 and similarity["nemo"] < similarity["plain"] / 2
