"""First-step noise differences, the signal NeMo scores (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from utils.diffusion import encode_prompts, latent_shape, predicted_noise, schedule_timestep
from utils.layers import NeuronSet, value_layers
from utils.methods.nemo import DETECTION_GUIDANCE_SCALE, NUM_INFERENCE_STEPS, SCALING_FACTOR, TIMESTEP_INDEX
from utils.methods.nemo.deactivation import deactivate_per_slice
from utils.models import load_pipeline_from_args


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
    scaling_factor: float = SCALING_FACTOR
    counter: UNetCounter | None = None
    normalized: bool = True  # False: the raw eps - x_T (diagnostics of the test bed)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, neuron_sets: Sequence[NeuronSet] | None = None,
                 solo: bool = False) -> torch.Tensor:
        """eps(x_T, t, y) - x_T (min-max normalized per map unless ``normalized`` is False) for
        each set: latents [n, 4, h, w] -> [sets, n, 4, h, w].

        All sets go through one U-Net call (set s deactivated in batch slice s). ``solo``
        asks for a call of its own (always so here; see ``LockstepNoise``).
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
            eps = self.predict(model_input, embedding, batch)
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

    def predict(self, model_input: torch.Tensor, embedding: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The noise the U-Net predicts for a scaled batch [b, 4, h, w] of the latents x_t
        [b, 4, h, w] and embeddings [b, 77, dim], whatever its prediction type (utils.diffusion)."""
        output = self.unet(model_input, self.timestep, encoder_hidden_states=embedding).sample
        return predicted_noise(self.scheduler, output, x_t, self.timestep)


@torch.no_grad()
def merged_noise_differences(requests: Sequence[tuple[NoiseDifference, torch.Tensor, list[NeuronSet]]]):
    """Several prompts' calls in one U-Net call: each (noise, latents [n, 4, h, w], sets) gets a
    slice per set with its own text embedding and neuron set. -> per request [sets, n, 4, h, w].

    The noise differences share the U-Net, layers and timestep; guidance 0 (detection's) only.
    """
    first = requests[0][0]
    if any(noise.guidance_scale > 0 or not noise.normalized or noise.unet is not first.unet for noise, _, _ in requests):
        raise ValueError("prompts side by side need one U-Net, guidance_scale 0 and normalized noise differences")
    param = next(first.unet.parameters())
    inputs, embeddings, slice_sets, sizes = [], [], [], []
    for noise, latents, sets in requests:
        x = latents.to(param.device, param.dtype)
        for neurons in sets:
            inputs.append(x)
            embeddings.append(noise.text_embedding.to(param.dtype).expand(len(x), -1, -1))
            slice_sets.append(neurons)
            sizes.append(len(x))
    batch = torch.cat(inputs)  # [sum of sets * n, 4, h, w]
    model_input = first.scheduler.scale_model_input(batch, first.timestep)
    with deactivate_per_slice(first.layers, slice_sets, first.scaling_factor, sizes):
        eps = first.predict(model_input, torch.cat(embeddings), batch)
    delta = normalize_maps((eps - batch).float()).cpu()
    results, start = [], 0
    for noise, latents, sets in requests:
        count = len(sets) * len(latents)
        results.append(delta[start:start + count].reshape(len(sets), *latents.shape))
        start += count
        if noise.counter is not None:
            noise.counter.calls += 1
            noise.counter.sample_forwards += count
    return results



def prompt_noise_difference(pipe, layers: dict, prompt: str, **settings) -> NoiseDifference:
    """A ``NoiseDifference`` bound to ``prompt``'s text embedding and the detection timestep."""
    embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])  # [1, 77, dim]
    return embedding_noise_difference(pipe, layers, embedding, **settings)


def embedding_noise_difference(pipe, layers: dict, embedding: torch.Tensor, *,
                               num_inference_steps: int = NUM_INFERENCE_STEPS, timestep_index: int = TIMESTEP_INDEX,
                               guidance_scale: float = DETECTION_GUIDANCE_SCALE, scaling_factor: float = SCALING_FACTOR,
                               normalized: bool = True) -> NoiseDifference:
    """A ``NoiseDifference`` bound to a text embedding [1, 77, dim] (a prompt's, or one found
    by an attack) and the detection timestep."""
    uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]) if guidance_scale > 0 else None
    timestep = schedule_timestep(pipe.scheduler, num_inference_steps, timestep_index)
    return NoiseDifference(pipe.unet, layers, embedding, timestep, pipe.scheduler, uncond, guidance_scale,
                           scaling_factor, normalized=normalized)


def load_detection_model(args):
    """(pipeline, value layers, latent shape) for scripts 2 and 3 from their flags; the SSIM
    window (--ssim_kernel_size) is checked against the latent size before any work is done."""
    from utils.methods.nemo.score import check_ssim_size  # score imports this module

    pipe = load_pipeline_from_args(args)
    kernel_size = args.ssim_kernel_size
    shape = latent_shape(pipe.unet)
    check_ssim_size(shape[-1], kernel_size)
    return pipe, value_layers(pipe.unet), shape
