"""Stable Diffusion's conventions, shared by every method: text conditioning, initial
latents, schedule timesteps."""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Last hidden state of the text encoder, padded to max_length: [n, 77, dim]."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def latent_shape(unet) -> tuple[int, int, int]:
    """(channels, h, w) of the U-Net's latents; SD v1.4: (4, 64, 64)."""
    size = unet.config.sample_size
    return (unet.config.in_channels, size, size)


def initial_latents(seed: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """x_T ~ N(0, I) [n, *shape] from a CPU generator seeded with ``seed``, in one draw."""
    return torch.randn((n, *shape), generator=torch.Generator("cpu").manual_seed(seed))


def schedule_timestep(scheduler, num_inference_steps: int, index: int) -> torch.Tensor:
    """The ``index``-th timestep of the scheduler's ``num_inference_steps``-step schedule."""
    scheduler.set_timesteps(num_inference_steps)
    if not 0 <= index < len(scheduler.timesteps):
        raise ValueError(f"timestep index {index} is outside the {len(scheduler.timesteps)}-step schedule")
    return scheduler.timesteps[index]
