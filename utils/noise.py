"""First-step noise differences, the signal NeMo scores (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from utils.hooks import deactivate_per_slice
from utils.layers import NeuronSet
from utils.statistics import encode_prompts

# Detection defaults (SPEC §3; authors' script 3 flags).
SAMPLES_PER_PROMPT = 10
NUM_INFERENCE_STEPS = 50
TIMESTEP_INDEX = 1  # the authors' loop returns at the schedule's second timestep (961 for SD)
DETECTION_GUIDANCE_SCALE = 0.0  # conditional prediction only


def initial_latents(seed: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """x_T ~ N(0, I) [n, *shape] from a CPU generator seeded with ``seed``, in one draw."""
    return torch.randn((n, *shape), generator=torch.Generator("cpu").manual_seed(seed))


def detection_timestep(scheduler, num_inference_steps: int = NUM_INFERENCE_STEPS,
                       index: int = TIMESTEP_INDEX) -> torch.Tensor:
    scheduler.set_timesteps(num_inference_steps)
    if not 0 <= index < len(scheduler.timesteps):
        raise ValueError(f"--timestep_index {index} is outside the {len(scheduler.timesteps)}-step schedule")
    return scheduler.timesteps[index]


def normalize_maps(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each [h, w] map of x [..., h, w] to [0, 1]."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    return (x - low) / (high - low).clamp_min(torch.finfo(x.dtype).tiny)


@dataclass
class UNetCounter:
    """U-Net work done: calls, and sample-forwards (one per latent per call)."""

    calls: int = 0
    sample_forwards: int = 0


@dataclass
class NoiseDifference:
    """Computes noise differences of one prompt: unet, embeddings and timestep bound once."""

    unet: torch.nn.Module
    layers: dict
    text_embedding: torch.Tensor  # [1, 77, dim]
    timestep: torch.Tensor
    scheduler: object
    uncond_embedding: torch.Tensor | None = None  # [1, 77, dim], needed when guidance_scale > 0
    guidance_scale: float = DETECTION_GUIDANCE_SCALE
    scaling_factor: float = 0.0
    counter: UNetCounter | None = None
    normalized: bool = True  # False: the raw eps - x_T (diagnostics of the test bed)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, neuron_sets: Sequence[NeuronSet] | None = None) -> torch.Tensor:
        """eps(x_T, t, y) - x_T (min-max normalized per map unless ``normalized`` is False) for
        each set: latents [n, 4, h, w] -> [sets, n, 4, h, w].

        All sets go through one U-Net call (set s deactivated in batch slice s).
        """
        sets = list(neuron_sets) if neuron_sets else [[[] for _ in self.layers]]
        param = next(self.unet.parameters())
        x = latents.to(param.device, param.dtype)
        batch = x.repeat(len(sets), 1, 1, 1)  # [sets * n, 4, h, w]
        embedding = self.text_embedding.to(param.dtype).expand(batch.shape[0], -1, -1)
        guided = self.guidance_scale > 0
        if guided:
            if self.uncond_embedding is None:
                raise ValueError("guidance_scale > 0 needs the unconditional embedding")
            # [cond slices..., uncond slices...]: two halves, each cut into the same set slices
            batch = torch.cat([batch, batch])
            uncond = self.uncond_embedding.to(param.dtype).expand(embedding.shape[0], -1, -1)
            embedding = torch.cat([embedding, uncond])
            sets = sets + sets
        model_input = self.scheduler.scale_model_input(batch, self.timestep)
        with deactivate_per_slice(self.layers, sets, self.scaling_factor):
            eps = self.unet(model_input, self.timestep, encoder_hidden_states=embedding).sample
        if self.counter is not None:
            self.counter.calls += 1
            self.counter.sample_forwards += batch.shape[0]
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
            batch = batch[: eps.shape[0]]
        delta = (eps - batch).float()
        if self.normalized:
            delta = normalize_maps(delta)
        return delta.reshape(-1, *latents.shape).cpu()  # [sets, n, 4, h, w]


def latent_shape(unet) -> tuple[int, int, int]:
    """(channels, h, w) of the U-Net's latents; SD v1.4: (4, 64, 64)."""
    size = unet.config.sample_size
    return (unet.config.in_channels, size, size)


def prompt_noise_difference(pipe, layers: dict, prompt: str, **settings) -> NoiseDifference:
    """A ``NoiseDifference`` bound to ``prompt``'s text embedding and the detection timestep."""
    embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])  # [1, 77, dim]
    return embedding_noise_difference(pipe, layers, embedding, **settings)


def embedding_noise_difference(pipe, layers: dict, embedding: torch.Tensor, *,
                               num_inference_steps: int = NUM_INFERENCE_STEPS, timestep_index: int = TIMESTEP_INDEX,
                               guidance_scale: float = DETECTION_GUIDANCE_SCALE, scaling_factor: float = 0.0,
                               normalized: bool = True) -> NoiseDifference:
    """A ``NoiseDifference`` bound to a text embedding [1, 77, dim] (a prompt's, or one found
    by an attack) and the detection timestep."""
    uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]) if guidance_scale > 0 else None
    timestep = detection_timestep(pipe.scheduler, num_inference_steps, timestep_index)
    return NoiseDifference(pipe.unet, layers, embedding, timestep, pipe.scheduler, uncond, guidance_scale,
                           scaling_factor, normalized=normalized)
