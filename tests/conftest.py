"""A tiny SD-shaped pipeline built offline (SD v1.4 block types, 7 value layers)."""

import importlib
import os
import re

import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline

from testbed.components import TinySize, build_components

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The numbered scripts by number (0_fetch_assets.py ... 9_adversarial_finetuning.py)
SCRIPT_NAMES = {int(name[0]): name[:-3] for name in os.listdir(ROOT) if re.fullmatch(r"\d_\w+\.py", name)}
script = {number: importlib.import_module(name) for number, name in SCRIPT_NAMES.items()}

TINY_WORDS = "a an the red blue green cat dog house tree photo of painting famous poster".split()
TINY_KERNEL = 5  # MS-SSIM kernel for the tiny model's 24x24 latents
MEMORIZED = ["the famous cat poster", "a red house painting", "a photo of a blue tree"]
UNMEMORIZED = ["a green dog", "a photo of a house", "the red tree", "a blue cat painting"]


def write_prompt_file(path, captions, types=None):
    frame = pd.DataFrame(dict(Caption=captions, URL=[f"http://x/{i}" for i in range(len(captions))]))
    if types:
        frame["type"] = types
    frame.to_csv(path, sep=";")
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny pipeline folder (what -v/--version takes)."""
    directory = tmp_path_factory.mktemp("tiny")
    components = build_components(TINY_WORDS, str(directory / "build"), TinySize(), seed=0)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(directory / "model")
    return str(directory / "model")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from utils.models import load_pipeline

    return load_pipeline(tiny_model_dir, torch.device("cpu"))


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("prompts")
    return dict(
        memorized=write_prompt_file(directory / "memorized.csv", MEMORIZED, ["VM", "TM", "VM"]),
        unmemorized=write_prompt_file(directory / "unmemorized.csv", UNMEMORIZED),
    )


UPSTREAM = os.environ.get("NEMO_UPSTREAM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "upstream"))


def upstream_file(name: str) -> str:
    """Path of an authors' data file, or skip the test when it is absent."""
    path = os.path.join(UPSTREAM, name)
    if not os.path.exists(path):
        pytest.skip(f"authors' data file {name} not present")
    return path
