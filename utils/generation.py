"""Image generation under a mitigation (SPEC §5, script 4).

A prompt is generated from a ``PromptCondition``: the text embedding of the conditional
branch and the interventions (hooks) in force at every denoising step. Every mitigation of
``utils.mitigation`` turns a caption into one; generation itself is the same for all.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch
from tqdm import tqdm

from utils.defaults import GENERATION_SEED, GENERATION_STEPS, GUIDANCE_SCALE, NUM_SAMPLES
from utils.diffusion import encode_prompts, initial_latents, latent_shape
from utils.files import drop_partial_line

logger = logging.getLogger(__name__)

IMAGE_NAME = "img_{prompt:04d}_{sample:02d}.jpg"
RECORDS_NAME = "prompt_records.jsonl"  # one line per generated prompt: what was done, its cost


@dataclass
class PromptCondition:
    """What one prompt's images are generated from."""

    embedding: torch.Tensor  # [1, 77, dim]: the conditional branch (the unconditional is the empty prompt's)
    intervention: Callable[[], ContextManager] = nullcontext  # hooks in force at every step
    record: dict = field(default_factory=dict)  # kept in prompt_records.jsonl (caption used, cost, ...)


def image_path(directory: str, prompt: int, sample: int) -> str:
    return os.path.join(directory, IMAGE_NAME.format(prompt=prompt, sample=sample))


def generation_latents(unet, seed: int = GENERATION_SEED, num_samples: int = NUM_SAMPLES) -> torch.Tensor:
    """A prompt's initial latents [n, 4, h, w]: one CPU draw seeded with ``seed``, so image j of
    two runs (with and without a mitigation) starts from the same noise."""
    return initial_latents(seed, num_samples, latent_shape(unet))


def stop_after(steps: int):
    """A ``callback_on_step_end`` that ends a pipeline's denoising loop after ``steps`` steps
    (diffusers' documented way: set the pipeline's ``_interrupt``)."""
    def callback(pipeline, step, _timestep, callback_kwargs):
        if step + 1 >= steps:
            pipeline._interrupt = True
        return callback_kwargs

    return callback


def caption_condition(pipe, caption: str) -> PromptCondition:
    """The plain condition of a caption: its text embedding, nothing else changed."""
    return PromptCondition(encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption]))


@torch.no_grad()
def generate_prompt_images(pipe, condition: PromptCondition, latents: torch.Tensor, *,
                           steps: int = GENERATION_STEPS, guidance_scale: float = GUIDANCE_SCALE,
                           batch_size: int = 1) -> list:
    """One PIL image per initial latent [n, 4, h, w] under ``condition``."""
    unet = pipe.unet
    size = unet.config.sample_size
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])  # [1, 77, dim]
    embedding = condition.embedding.to(unet.device, unet.dtype)
    images = []
    with condition.intervention():
        for start in range(0, len(latents), batch_size):
            part = latents[start:start + batch_size].to(unet.device, unet.dtype)
            n = len(part)
            images += pipe(prompt_embeds=embedding.expand(n, -1, -1), negative_prompt_embeds=negative.expand(n, -1, -1),
                           latents=part, num_inference_steps=steps, guidance_scale=guidance_scale,
                           height=size * pipe.vae_scale_factor, width=size * pipe.vae_scale_factor).images
    return images


# prepare(prompt index, caption, initial latents [n, 4, h, w]) -> that prompt's condition
Prepare = Callable[[int, str, torch.Tensor], PromptCondition]


def generate_images(pipe, captions: dict[int, str], prepare: Prepare, output: str, *, seed: int = GENERATION_SEED,
                    num_samples: int = NUM_SAMPLES, **settings) -> int:
    """Write ``img_{prompt:04d}_{sample:02d}.jpg`` for every prompt of ``captions`` (prompt
    index -> caption) and a line per prompt in ``prompt_records.jsonl``; prompts whose images
    all exist already are skipped (a killed run resumes). Returns the prompts generated."""
    os.makedirs(output, exist_ok=True)
    generated = 0
    records_path = os.path.join(output, RECORDS_NAME)
    if os.path.exists(records_path):
        drop_partial_line(records_path)  # what a killed run left half written
    latents = generation_latents(pipe.unet, seed, num_samples)  # every prompt starts from the same noise
    with open(records_path, "a") as records:
        for index, caption in tqdm(captions.items(), desc="generating", unit="prompt"):
            if all(os.path.exists(image_path(output, index, j)) for j in range(num_samples)):
                continue
            start = time.perf_counter()
            condition = prepare(index, caption, latents)
            for j, image in enumerate(generate_prompt_images(pipe, condition, latents, **settings)):
                image.save(image_path(output, index, j))
            record = dict(prompt=index, caption=caption, **condition.record, seconds=round(time.perf_counter() - start, 3))
            records.write(json.dumps(record) + "\n")
            records.flush()
            generated += 1
    return generated


def read_records(output: str) -> dict[int, dict]:
    """The last record of each prompt in ``output``'s ``prompt_records.jsonl`` (empty if none)."""
    path = os.path.join(output, RECORDS_NAME)
    if not os.path.exists(path):
        return {}
    records = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[int(record["prompt"])] = record
            except (ValueError, KeyError):
                raise ValueError(f"{path} line {number}: expected a JSON object with a 'prompt' key") from None
    return records
