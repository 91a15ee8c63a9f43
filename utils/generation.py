"""Image generation with neurons deactivated (SPEC §5, script 4)."""

from __future__ import annotations

import logging
import os

import torch
from tqdm import tqdm

from utils.hooks import deactivate_neurons
from utils.layers import NeuronSet, value_layers
from utils.noise import initial_latents

logger = logging.getLogger(__name__)

# Authors' script 4 defaults (SPEC §5).
GENERATION_SEED = 2
NUM_SAMPLES = 10
GENERATION_STEPS = 50
GUIDANCE_SCALE = 7.0
IMAGE_NAME = "img_{prompt:04d}_{sample:02d}.jpg"


def image_path(directory: str, prompt: int, sample: int) -> str:
    return os.path.join(directory, IMAGE_NAME.format(prompt=prompt, sample=sample))


@torch.no_grad()
def generate_prompt_images(pipe, prompt: str, neurons: NeuronSet | None, *, seed: int = GENERATION_SEED,
                           num_samples: int = NUM_SAMPLES, steps: int = GENERATION_STEPS,
                           guidance_scale: float = GUIDANCE_SCALE, scaling_factor: float = 0.0,
                           batch_size: int = 1) -> list:
    """``num_samples`` PIL images of ``prompt`` with ``neurons`` deactivated at every step.

    The latents of every prompt come from one CPU draw seeded with ``seed``, so image j
    of two runs (with and without deactivation) starts from the same noise.
    """
    unet = pipe.unet
    size = unet.config.sample_size
    latents = initial_latents(seed, num_samples, (unet.config.in_channels, size, size))  # [n, 4, h, w]
    neurons = neurons or [[] for _ in value_layers(unet)]
    images = []
    with deactivate_neurons(value_layers(unet), neurons, scaling_factor):
        for start in range(0, num_samples, batch_size):
            part = latents[start:start + batch_size].to(unet.device, unet.dtype)
            images += pipe([prompt] * len(part), latents=part, num_inference_steps=steps,
                           guidance_scale=guidance_scale, height=size * pipe.vae_scale_factor,
                           width=size * pipe.vae_scale_factor).images
    return images


def generate_images(pipe, prompts: list[str], neuron_sets: list[NeuronSet | None], output: str,
                    prompt_indices: list[int] | None = None, **settings) -> int:
    """Write ``img_{prompt:04d}_{sample:02d}.jpg`` for every prompt; prompts whose images
    all exist already are skipped (a killed run resumes). Returns the prompts generated."""
    os.makedirs(output, exist_ok=True)
    indices = prompt_indices if prompt_indices is not None else list(range(len(prompts)))
    num_samples = settings.get("num_samples", NUM_SAMPLES)
    generated = 0
    for index, prompt, neurons in tqdm(list(zip(indices, prompts, neuron_sets)), desc="generating", unit="prompt"):
        if all(os.path.exists(image_path(output, index, j)) for j in range(num_samples)):
            continue
        for j, image in enumerate(generate_prompt_images(pipe, prompt, neurons, **settings)):
            image.save(image_path(output, index, j))
        generated += 1
    return generated
