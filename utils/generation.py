"""Image generation under a mitigation (SPEC §5, script 4).

A prompt is generated from a ``PromptCondition``: the text embedding of the conditional
branch and the interventions (hooks) in force at every denoising step. Every mitigation of
``utils.methods`` turns a caption into one (its ``prepare``); generation itself is the same for all.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch
from tqdm import tqdm

from utils.crashpoints import crash_point, step_callback
from utils.defaults import GENERATION_SEED, GENERATION_STEPS, GUIDANCE_SCALE, NUM_SAMPLES, PROMPTS_PER_BATCH
from utils.diffusion import encode_prompts, initial_latents, latent_shape
from utils.distributed import Shard
from utils.files import drop_partial_line
from utils.hooks import count_samples
from utils.outputs import remove_leftovers, save_image

logger = logging.getLogger(__name__)

IMAGE_NAME = "img_{prompt:04d}_{sample:02d}.jpg"
RECORDS_NAME = "prompt_records.jsonl"  # one line per generated prompt: what was done, its cost
# under a launcher, process RANK > 0 writes its lines here: no two processes append to one file,
# which a shared file system (NFS) does not keep whole
RANK_RECORDS_NAME = "prompt_records.{rank}.jsonl"
RANK_RECORDS = re.compile(r"prompt_records\.([1-9][0-9]*)\.jsonl")
CONFIG_NAME = "config.json"  # the run's flags, prompts and neurons (the authors' script 4 writes it too)


@dataclass
class PromptCondition:
    """What one prompt's images are generated from."""

    embedding: torch.Tensor  # [1, 77, dim]: the conditional branch (the unconditional is the empty prompt's)
    intervention: Callable[[], ContextManager] = nullcontext  # hooks in force at every step
    record: dict = field(default_factory=dict)  # kept in prompt_records.jsonl (caption used, cost, ...)
    latents: torch.Tensor | None = None  # [n, 4, h, w]: this prompt's initial latents instead of the run's
    guidance: Callable[[int], float] | None = None  # step index -> guidance scale; None: the run's at every step


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


def unchanged(pipe) -> Prepare:
    """Each prompt's plain condition (no mitigation)."""
    return lambda _index, caption, _latents: caption_condition(pipe, caption)


def same_intervention(a: Callable | None, b: Callable | None) -> bool:
    """Whether two prompts' interventions (or guidance schedules) are the same, so that their
    images can share a call."""
    if a is b:
        return True
    return (isinstance(a, functools.partial) and isinstance(b, functools.partial) and a.func is b.func
            and a.keywords == b.keywords and len(a.args) == len(b.args)
            and all(x is y or (type(x) is type(y) and not isinstance(x, torch.Tensor) and x == y)
                    for x, y in zip(a.args, b.args)))


def same_call(a: PromptCondition, b: PromptCondition) -> bool:
    """Whether two prompts' images can share a pipeline call (the same hooks and guidance)."""
    return same_intervention(a.intervention, b.intervention) and same_intervention(a.guidance, b.guidance)


@torch.no_grad()
def scheduled_guidance(pipe, embeddings: torch.Tensor, negative: torch.Tensor, latents: torch.Tensor, steps: int,
                       guidance: Callable[[int], float]) -> list:
    """The pipeline's denoising loop with the guidance scale of step i set to ``guidance(i)``
    (any value: both branches are computed at every step, as the pipeline does above 1);
    embeddings and negative [b, 77, dim], latents [b, 4, h, w]. Returns b PIL images."""
    unet, scheduler = pipe.unet, pipe.scheduler
    scheduler.set_timesteps(steps, device=unet.device)
    x = latents * scheduler.init_noise_sigma
    condition = torch.cat([negative, embeddings])
    callback = step_callback()
    for i, t in enumerate(scheduler.timesteps):
        noise = unet(scheduler.scale_model_input(torch.cat([x] * 2), t), t, encoder_hidden_states=condition).sample
        unconditional, conditional = noise.chunk(2)
        x = scheduler.step(unconditional + guidance(i) * (conditional - unconditional), t, x, return_dict=False)[0]
        if callback:
            callback(pipe, i, t, {})
    images = pipe.vae.decode(x / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(images))


@torch.no_grad()
def generate_batch(pipe, conditions: list[PromptCondition], latents: torch.Tensor, *,
                   steps: int = GENERATION_STEPS, guidance_scale: float = GUIDANCE_SCALE) -> list[list]:
    """All images of several prompts in one pipeline call, each prompt from the run's initial
    latents [n, 4, h, w] (or its own, ``PromptCondition.latents``); the conditions must share
    their intervention and guidance. Returns n PIL images per prompt."""
    if any(not same_call(c, conditions[0]) for c in conditions):
        raise ValueError("prompts of one pipeline call need the same intervention and guidance")
    unet = pipe.unet
    size = unet.config.sample_size
    n = len(latents)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])  # [1, 77, dim]
    embeddings = torch.cat([c.embedding.to(unet.device, unet.dtype).expand(n, -1, -1) for c in conditions])
    batch = torch.cat([(latents if c.latents is None else c.latents).to(unet.device, unet.dtype)
                       for c in conditions])  # [prompts * n, 4, h, w]
    with conditions[0].intervention():
        if conditions[0].guidance is not None:
            images = scheduled_guidance(pipe, embeddings, negative.to(unet.dtype).expand(len(batch), -1, -1), batch,
                                        steps, conditions[0].guidance)
        else:
            images = pipe(prompt_embeds=embeddings, negative_prompt_embeds=negative.expand(len(batch), -1, -1),
                          latents=batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                          height=size * pipe.vae_scale_factor, width=size * pipe.vae_scale_factor,
                          callback_on_step_end=step_callback()).images
    return [images[k * n:(k + 1) * n] for k in range(len(conditions))]


def generate_prompt_images(pipe, condition: PromptCondition, latents: torch.Tensor, **settings) -> list:
    """One PIL image per initial latent [n, 4, h, w] under ``condition``, all in one call."""
    return generate_batch(pipe, [condition], latents, **settings)[0]


def _groups(conditions: list[PromptCondition]) -> list[list[int]]:
    """Runs of consecutive prompts with the same intervention and guidance (each run is one call)."""
    groups: list[list[int]] = []
    for k, condition in enumerate(conditions):
        if groups and same_call(conditions[groups[-1][0]], condition):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


# prepare(prompt index, caption, initial latents [n, 4, h, w]) -> that prompt's condition
Prepare = Callable[[int, str, torch.Tensor], PromptCondition]


def prompt_done(output: str, index: int, num_samples: int, records: dict[int, dict]) -> bool:
    """A prompt is done when its record is written (after its images) and all its images exist."""
    return index in records and all(os.path.exists(image_path(output, index, j)) for j in range(num_samples))


def generate_images(pipe, captions: dict[int, str], prepare: Prepare, output: str, *, seed: int = GENERATION_SEED,
                    num_samples: int = NUM_SAMPLES, batch_size: int = PROMPTS_PER_BATCH, **settings) -> int:
    """Write ``img_{prompt:04d}_{sample:02d}.jpg`` for every prompt of ``captions`` (prompt
    index -> caption), ``batch_size`` prompts a pipeline call with all their ``num_samples``
    images, each image atomically, then a line per prompt in ``prompt_records.jsonl`` (under a
    launcher, process RANK > 0 in ``prompt_records.{RANK}.jsonl``). Prompts done already
    (``prompt_done``) are skipped, so a killed run continues. The folder's settings are the
    caller's to check (``utils.outputs.claim_output``). Returns the prompts generated."""
    os.makedirs(output, exist_ok=True)
    remove_leftovers(output)
    rank = Shard.from_env().rank
    records_path = os.path.join(output, RANK_RECORDS_NAME.format(rank=rank) if rank else RECORDS_NAME)
    if os.path.exists(records_path):
        drop_partial_line(records_path)  # what a killed run left half written
    done = read_records(output)
    pending = [i for i in captions if not prompt_done(output, i, num_samples, done)]
    latents = generation_latents(pipe.unet, seed, num_samples)  # every prompt starts from the same noise
    with open(records_path, "a") as records, tqdm(total=len(pending), desc="generating", unit="prompt") as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            began = time.perf_counter()
            with count_samples(pipe.unet) as counted:  # the mitigation's and the generation's
                conditions = [prepare(i, captions[i], latents) for i in batch]
                for group in _groups(conditions):
                    images = generate_batch(pipe, [conditions[k] for k in group], latents, **settings)
                    for k, prompt_images in zip(group, images):
                        for j, image in enumerate(prompt_images):
                            save_image(image_path(output, batch[k], j), image)
            seconds = (time.perf_counter() - began) / len(batch)
            cost = dict(images=num_samples, unet_sample_forwards=counted["forwards"] / len(batch),
                        unet_sample_backwards=counted["backwards"] / len(batch), seconds=round(seconds, 3))
            for i, condition in zip(batch, conditions):
                record = dict(prompt=i, caption=captions[i], **condition.record, **cost)
                records.write(json.dumps(record) + "\n")
                records.flush()
                os.fsync(records.fileno())
                crash_point("prompt_done")
            bar.update(len(batch))
    return len(pending)


def records_files(output: str) -> list[str]:
    """``output``'s record files: ``prompt_records.jsonl``, then each process's by rank."""
    ranks = sorted(int(match[1]) for match in map(RANK_RECORDS.fullmatch, os.listdir(output)) if match)
    names = [RECORDS_NAME] + [RANK_RECORDS_NAME.format(rank=rank) for rank in ranks]
    return [os.path.join(output, name) for name in names if os.path.exists(os.path.join(output, name))]


def read_records(output: str) -> dict[int, dict]:
    """The last record of each prompt in ``output``'s record files (``records_files``; empty if none)."""
    if not os.path.isdir(output):
        return {}
    records = {}
    for path in records_files(output):
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
