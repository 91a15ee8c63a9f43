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


# What the U-Net predicts is the scheduler config's ``prediction_type`` (SD v1.x, SD 2-base:
# epsilon; SD 2 and 2.1 at 768 px: v_prediction). Code that needs the noise asks these two.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")
    return kind


def _alpha_bar(scheduler, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) broadcastable to ``like`` [b, c, h, w]
    (t: one timestep or one per latent), in float32 on ``like``'s device."""
    alpha_bar = scheduler.alphas_cumprod.to(like.device)[torch.as_tensor(t, device=like.device).long()]
    alpha_bar = alpha_bar.float().reshape(-1, *([1] * (like.dim() - 1)))
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def predicted_noise(scheduler, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """The noise eps the U-Net's output [b, c, h, w] stands for at the noisy latents x_t
    [b, c, h, w] and timestep t: epsilon as is; v (Salimans & Ho 2022) as
    sqrt(a_t) v + sqrt(1 - a_t) x_t; a predicted x_0 as (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t).
    Same dtype as ``model_output``."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return model_output
    signal, noise = _alpha_bar(scheduler, t, model_output)
    output, x = model_output.float(), x_t.float()
    if kind == "v_prediction":
        eps = signal * output + noise * x
    else:
        eps = (x - signal * output) / noise
    return eps.to(model_output.dtype)


def denoising_target(scheduler, noise: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """What the U-Net is trained to output for x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise
    (noise, x0 [b, c, h, w], t one timestep per latent): noise, v = sqrt(a_t) noise -
    sqrt(1 - a_t) x0, or x0, by the scheduler's prediction type."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    signal, sigma = _alpha_bar(scheduler, t, noise)
    return (signal * noise.float() - sigma * x0.float()).to(noise.dtype)
