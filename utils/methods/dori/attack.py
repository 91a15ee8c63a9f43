"""Dori's attack (Kowalczuk, Hintersdorf, Struppek et al., "Finding Dori: Memorization in
Text-to-Image Diffusion Models Is Not Local"): text embeddings that make a mitigated model
replicate a training image again.

The attack optimizes the text conditioning the U-Net reads (the text encoder's output
[1, 77, dim]), starting from the memorized prompt's own, with the ordinary denoising loss on
the known training image: || eps - eps(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, y) ||^2, fresh
noise and timesteps at every step, the U-Net frozen. Its defaults, with their sources, are in
``utils.methods.dori``; adversarial fine-tuning against it is in ``finetuning``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from utils.defaults import GENERATION_STEPS, GUIDANCE_SCALE
from utils.diffusion import denoising_target
from utils.distributed import Shard, all_reduce_sum
from utils.generation import PromptCondition, generate_prompt_images
from utils.methods.dori import ATTACK_BATCH, ATTACK_LEARNING_RATE, ATTACK_SEED, ATTACK_STEPS
from utils.models import frozen

# original, images -> the similarity of each image to the original [n] (metrics.copies.similarity_to_original)
Similarity = Callable[[Image.Image, list], torch.Tensor]


@torch.no_grad()
def image_latents(pipe, images: list[Image.Image]) -> torch.Tensor:
    """The VAE latents [n, 4, h, w] of images, resized to the model's resolution (the mean of
    the encoder's distribution, times the VAE's scaling factor, as in SD's training)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = torch.stack([torch.from_numpy(np.array(image.convert("RGB").resize((size, size), Image.BICUBIC)))
                          for image in images]).permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, 3, H, W] in [-1, 1]
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return latents * vae.config.scaling_factor


def denoising_loss(pipe, latents: torch.Tensor, embeddings: torch.Tensor, generator: torch.Generator,
                   part: slice = slice(None)) -> torch.Tensor:
    """The ordinary denoising loss of latents [b, 4, h, w] with conditions [b, 77, dim]: a
    timestep and a noise per latent, drawn from ``generator`` (CPU). With ``part``, the mean over
    those items only (a process's share of the batch): every draw of the whole batch is made,
    so the generator's stream and each item's draws are those of one process; an empty part is 0."""
    unet, scheduler = pipe.unet, pipe.scheduler
    b = len(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    latents, embeddings, timesteps, noise = latents[part], embeddings[part], timesteps[part], noise[part]
    if not len(latents):
        return torch.zeros((), device=unet.device)
    noise = noise.to(latents.device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps.to(latents.device))
    prediction = unet(noisy, timesteps.to(unet.device), encoder_hidden_states=embeddings.to(unet.dtype)).sample
    return F.mse_loss(prediction.float(), denoising_target(scheduler, noise, latents, timesteps).float())


@dataclass
class Attack:
    """An embedding found by the attack, with its loss per step and its cost."""

    embedding: torch.Tensor  # [1, 77, dim], float32
    losses: list[float]  # per step
    seconds: float
    unet_sample_forwards: int


def attack(pipe, latent: torch.Tensor, initial: torch.Tensor, *, steps: int = ATTACK_STEPS,
           learning_rate: float = ATTACK_LEARNING_RATE, batch: int = ATTACK_BATCH, seed: int = ATTACK_SEED,
           intervention: Callable[[], ContextManager] = nullcontext, shard: Shard = Shard()) -> Attack:
    """An embedding [1, 77, dim] that makes the model denoise towards ``latent`` [1, 4, h, w],
    from ``initial`` [1, 77, dim]; ``intervention`` (e.g. NeMo's deactivation) is in force.
    The U-Net stays frozen; gradients reach the embedding only.

    With a ``shard`` of several processes (in their process group), each runs its part of every
    step's ``batch`` noise samples (``Shard.batch_slice``) and the parts' gradients, weighted by
    their shares, are summed: every process takes the same steps, one process's up to float
    rounding, and records the whole batch's loss."""
    start = time.perf_counter()
    unet = pipe.unet
    embedding = initial.detach().to(unet.device, torch.float32).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=learning_rate)
    generator = torch.Generator("cpu").manual_seed(seed)
    targets = latent.to(unet.device, unet.dtype).expand(batch, -1, -1, -1)
    part, share = shard.batch_slice(batch), shard.batch_share(batch)  # one process: share 1, the bits kept
    losses = []
    with frozen(unet), torch.enable_grad(), intervention():
        for _ in tqdm(range(steps), desc="attack steps", unit="step", leave=False):
            loss = share * denoising_loss(pipe, targets, embedding.expand(batch, -1, -1), generator, part)
            optimizer.zero_grad()
            if loss.requires_grad:  # not for an empty part
                loss.backward()
            if embedding.grad is None:  # an empty part adds nothing to the sum
                embedding.grad = torch.zeros_like(embedding)
            whole = loss.detach().reshape(1).float()
            all_reduce_sum(shard, [embedding.grad, whole])
            optimizer.step()
            losses.append(whole.item())
    return Attack(embedding.detach(), losses, time.perf_counter() - start, steps * (part.stop - part.start))


def embedding_distances(adversarial: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    """L2 distance and cosine similarity of two embeddings [1, 77, dim], flattened."""
    a, b = adversarial.flatten().double().cpu(), original.flatten().double().cpu()
    return dict(l2=(a - b).norm().item(), cosine=F.cosine_similarity(a, b, dim=0).item())


@dataclass
class AttackOutcome:
    """One prompt attacked: the best similarity of its images to the training image before and
    after, and what the attack found."""

    similarity_before: float  # images of the prompt's own embedding
    similarity_after: float  # images of the adversarial embedding
    images: list  # PIL images of the adversarial embedding, one per initial latent
    embedding: torch.Tensor  # [1, 77, dim], float32
    l2: float  # distance of the adversarial embedding to the prompt's
    cosine: float  # cosine similarity of the two
    losses: list[float]  # per attack step
    seconds: float  # of the attack alone


def attack_prompt(pipe, original: Image.Image, condition: PromptCondition, latents: torch.Tensor,
                  similarity: Similarity, *, steps: int = ATTACK_STEPS, learning_rate: float = ATTACK_LEARNING_RATE,
                  batch: int = ATTACK_BATCH, seed: int = ATTACK_SEED, generation_steps: int = GENERATION_STEPS,
                  guidance_scale: float = GUIDANCE_SCALE) -> AttackOutcome:
    """Attack a prompt's training image ``original`` from its ``condition`` (embedding
    [1, 77, dim] and intervention, e.g. NeMo's, in force throughout): its images from
    ``latents`` [n, 4, h, w] are scored with ``similarity`` before and after the attack."""
    def generate(embedding: torch.Tensor) -> list:
        return generate_prompt_images(pipe, PromptCondition(embedding, condition.intervention), latents,
                                      steps=generation_steps, guidance_scale=guidance_scale)

    before = similarity(original, generate(condition.embedding)).max().item()
    found = attack(pipe, image_latents(pipe, [original]), condition.embedding, steps=steps,
                   learning_rate=learning_rate, batch=batch, seed=seed, intervention=condition.intervention)
    images = generate(found.embedding)
    after = similarity(original, images).max().item()
    distances = embedding_distances(found.embedding, condition.embedding)
    return AttackOutcome(before, after, images, found.embedding, distances["l2"], distances["cosine"],
                         found.losses, found.seconds)
