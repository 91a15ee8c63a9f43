"""Train the built-in test bed: a tiny SD-shaped model that memorizes some captions.

Deterministic (seeded) and CPU-friendly. Writes, under ``--output`` (default ``testbed/``):
* ``model/``: a diffusers folder (``StableDiffusionPipeline.from_pretrained`` loads it);
* ``prompts/``: prompt files in the authors' CSV format (memorized, unmemorized, additional);
* ``originals/``: the training image of each memorized prompt, ``{index:04d}.png``.

Usage: ``python -m testbed.train_testbed [--unet-steps N]`` (``make testbed``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from testbed import synthetic_data as data
from testbed.components import TinySize, build_components

logger = logging.getLogger(__name__)

TESTBED_SIZE = TinySize(
    unet_channels=(16, 32, 32, 32),
    norm_groups=8,
    attention_heads=4,
    text_width=64,
    text_layers=2,
    vae_channels=(16, 32),
    latent_size=24,  # 48 px images; 24 is the smallest latent MS-SSIM (3 scales, kernel 5) accepts
    cross_attention_only_first_level=True,
)
SEED = 0
BATCH_SIZE = 32
VAE_STEPS = 1500
# Share of each batch per caption kind; the rest is ordinary captions.
VM_SHARE, TM_SHARE = 0.35, 0.15
CAPTION_DROPOUT = 0.1  # empty caption, so classifier-free guidance works
# NeMo reads memorization off the first DDIM step (t=961), where the epsilon loss barely
# depends on the caption (it scales with alpha_bar ~ 0.007). So half of each batch draws t
# from the high-noise range, and the loss is weighted by 1/SNR there (capped): the test bed
# then memorizes where the detector looks, as SD v1.4 does after its long training.
HIGH_T_SHARE, HIGH_T_START = 0.5, 800
MAX_LOSS_WEIGHT = 10.0
DETECTION_TIMESTEP = 961  # SD's DDIM-50 timestep index 1 (SPEC §3)
WARMUP_STEPS = 100


@dataclasses.dataclass(frozen=True)
class UNetPhase:
    """One stage of U-Net + text-encoder training, with its own optimizer and random streams.

    ``cosine``: the learning rate decays to 10% over the phase (else it stays constant after
    the warm-up, so every checkpoint of the phase is the same run stopped earlier).
    ``ema_decay``: the saved weights are a moving average of the trained ones, with decay
    ``min(ema_decay, (1 + step) / (10 + step))`` (the warm-up of diffusers' ``EMAModel``).
    """

    steps: int
    learning_rate: float
    cosine: bool
    draw_seed: int  # the sampler's draws
    noise_seed: int  # noise and timesteps
    max_loss_weight: float = MAX_LOSS_WEIGHT
    ema_decay: float | None = None  # save an exponential moving average of the weights


MAIN_PHASE = UNetPhase(steps=4000, learning_rate=5e-4, cosine=True, draw_seed=SEED + 1, noise_seed=SEED)
# Longer training is what brings the first-step prediction of a memorized caption close to
# its image (BENCHMARKS.md, point 3): a fresh optimizer at a constant rate (2e-4 moved it
# faster than 1e-4 there), and the average of the weights saved (without it the weights'
# step-to-step noise undid the gain). Off by default: the shipped model has no such phase.
CONSOLIDATION_PHASE = UNetPhase(steps=0, learning_rate=2e-4, cosine=False, draw_seed=SEED + 2, noise_seed=SEED + 2,
                                ema_decay=0.999)


class Sampler:
    """Draws training batches (images [B, 3, 48, 48] in [-1, 1], captions) from the mixture.

    ``data_seed`` fixes the dataset (VM images, TM layouts, held-out split) and must be the
    seed the prompt files and originals are written with; ``draw_seed`` drives the draws.
    """

    def __init__(self, data_seed: int, draw_seed: int):
        self.rng = np.random.default_rng(draw_seed)
        self.seed = data_seed
        self.ordinary, _ = data.split_ordinary(data_seed)
        self.vm_images = [data.render_vm(i, data_seed) for i in range(len(data.VM_NAMES))]

    def draw(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        for _ in range(batch_size):
            u = self.rng.random()
            if u < VM_SHARE:
                i = int(self.rng.integers(len(data.VM_NAMES)))
                images.append(self.vm_images[i])
                captions.append(data.vm_caption(i))
            elif u < VM_SHARE + TM_SHARE:
                t, v = self.rng.integers(len(data.TM_TEMPLATES)), self.rng.integers(len(data.TM_VARIANTS))
                images.append(data.render_tm(int(t), self.rng, self.seed))
                captions.append(data.tm_caption(int(t), int(v)))
            else:
                combo = self.ordinary[self.rng.integers(len(self.ordinary))]
                images.append(data.render_ordinary(combo, self.rng))
                captions.append(data.ordinary_caption(combo))
            if self.rng.random() < CAPTION_DROPOUT:
                captions[-1] = ""
        return to_tensor(np.stack(images)), captions


def unet_sampler(phase: UNetPhase = MAIN_PHASE) -> Sampler:
    """A U-Net phase's sampler: the dataset of the prompt files, the phase's stream of draws."""
    return Sampler(SEED, phase.draw_seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae, sampler: Sampler, steps: int) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in range(steps):
        x, _ = sampler.draw(BATCH_SIZE)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(sampler.draw(BATCH_SIZE)[0]).latent_dist.mode() for _ in range(8)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    logger.info("vae scaling factor %.4f", vae.config.scaling_factor)


def encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


@torch.no_grad()
def memorization_check(components, sampler: Sampler) -> float:
    """Go/no-go: mean cosine, over VM prompts and 4 seeds, between eps_pred - x_T and the
    ideal -sqrt(a)/sqrt(1-a) * x0 at the detection timestep."""
    unet, vae, scheduler = components["unet"], components["vae"], components["scheduler"]
    alpha = scheduler.alphas_cumprod[DETECTION_TIMESTEP]
    x0 = vae.encode(to_tensor(np.stack(sampler.vm_images))).latent_dist.mode() * vae.config.scaling_factor
    emb = encode_text(components["tokenizer"], components["text_encoder"],
                      [data.vm_caption(i) for i in range(len(x0))])
    cosines = []
    for seed in range(4):
        x_t = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        eps = unet(x_t, DETECTION_TIMESTEP, encoder_hidden_states=emb).sample
        ideal = -(alpha.sqrt() / (1 - alpha).sqrt()) * x0
        cosines.append(F.cosine_similarity((eps - x_t).flatten(1), ideal.flatten(1)))
    return torch.cat(cosines).mean().item()


def learning_rate_at(phase: UNetPhase, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of the phase's rate."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    decay = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / phase.steps)) if phase.cosine else 1.0
    return phase.learning_rate * warmup * decay


class MovingAverage:
    """Exponential moving average of ``params`` (a list of tensors), swapped in to save."""

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay = params, decay
        self.average = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.average, self.params, 1 - min(self.decay, (1 + step) / (10 + step)))

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        trained = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            torch._foreach_copy_(self.params, trained)


def noised_batch(vae, scheduler, images: torch.Tensor, generator: torch.Generator):
    """A training batch's inputs: images [B, 3, H, W] -> (noise, noisy latents [B, 4, h, w],
    timesteps [B]), a share HIGH_T_SHARE of the timesteps drawn from [HIGH_T_START, T)."""
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    batch, steps = len(images), scheduler.config.num_train_timesteps
    noise = torch.randn(latents.shape, generator=generator)
    high = torch.rand(batch, generator=generator) < HIGH_T_SHARE
    t = torch.where(high, torch.randint(HIGH_T_START, steps, (batch,), generator=generator),
                    torch.randint(0, steps, (batch,), generator=generator))
    return noise, scheduler.add_noise(latents, noise, t), t


def weighted_denoising_loss(scheduler, pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                            max_weight: float | torch.Tensor) -> torch.Tensor:
    """Epsilon MSE per sample [B] weighted by 1/SNR between 1 and ``max_weight`` (one cap, or
    one per sample [B]), averaged."""
    alpha = scheduler.alphas_cumprod[t]
    weight = torch.minimum(((1 - alpha) / alpha).clamp_min(1.0), torch.as_tensor(max_weight))
    return (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()


def train_unet(components, phase: UNetPhase, save) -> None:
    """Train the U-Net and the text encoder for one phase; ``save(step)`` every 500 steps."""
    unet, text_encoder, vae = components["unet"], components["text_encoder"], components["vae"]
    scheduler = components["scheduler"]
    sampler = unet_sampler(phase)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    for module in (unet, text_encoder):
        module.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=phase.learning_rate, weight_decay=0.0)
    average = MovingAverage(params, phase.ema_decay) if phase.ema_decay else None
    generator = torch.Generator().manual_seed(phase.noise_seed)
    start = time.time()
    for step in range(phase.steps):
        images, captions = sampler.draw(BATCH_SIZE)
        noise, noisy, t = noised_batch(vae, scheduler, images, generator)
        pred = unet(noisy, t, encoder_hidden_states=encode_text(components["tokenizer"], text_encoder, captions)).sample
        loss = weighted_denoising_loss(scheduler, pred, noise, t, phase.max_loss_weight)
        for group in opt.param_groups:
            group["lr"] = learning_rate_at(phase, step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if average:
            average.update(step)
        if step % 50 == 0:
            rate = (time.time() - start) / (step + 1)
            logger.info("unet step %d/%d loss %.4f (%.2f s/step, %.0f min left)",
                        step, phase.steps, loss.item(), rate, rate * (phase.steps - step) / 60)
        if (step + 1) % 500 == 0 or step == phase.steps - 1:
            unet.eval(), text_encoder.eval()
            with average.swapped_in() if average else contextlib.nullcontext():
                logger.info("step %d: VM go/no-go cosine %.3f", step + 1, memorization_check(components, sampler))
                save(step + 1)
            unet.train(), text_encoder.train()
    if average:
        with torch.no_grad():
            torch._foreach_copy_(params, average.average)  # the next phase starts from the saved weights


def write_prompts(directory: str, seed: int) -> None:
    """Prompt files in the authors' format (``;``-separated, leading unnamed index column)."""
    os.makedirs(os.path.join(directory, "prompts"), exist_ok=True)
    os.makedirs(os.path.join(directory, "originals"), exist_ok=True)
    rows = []
    for i in range(len(data.VM_NAMES)):
        rows.append(dict(Caption=data.vm_caption(i), URL=f"testbed:vm/{i}", type="VM"))
        Image.fromarray(data.render_vm(i, seed)).save(os.path.join(directory, "originals", f"{len(rows) - 1:04d}.png"))
    rng = np.random.default_rng([seed, 3])
    for t in range(len(data.TM_TEMPLATES)):
        for v in range(len(data.TM_VARIANTS)):
            rows.append(dict(Caption=data.tm_caption(t, v), URL=f"testbed:tm/{t}", type="TM"))
            image = data.render_tm(t, rng, seed)
            Image.fromarray(image).save(os.path.join(directory, "originals", f"{len(rows) - 1:04d}.png"))
    memorized = pd.DataFrame(rows)
    memorized["mean_sscd"] = np.nan
    memorized["max_sscd"] = np.nan
    memorized["Index"] = range(len(memorized))
    memorized.to_csv(os.path.join(directory, "prompts", "memorized_prompts.csv"), sep=";")
    train, held = data.split_ordinary(seed)
    for name, combos in (("unmemorized_prompts.csv", held), ("additional_prompts.csv", train)):
        frame = pd.DataFrame(dict(Caption=[data.ordinary_caption(c) for c in combos], URL="", Index=range(len(combos))))
        frame.to_csv(os.path.join(directory, "prompts", name), sep=";")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="testbed", help="folder to write model/, prompts/, originals/ (default: testbed)")
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS, help=f"autoencoder steps (default: {VAE_STEPS})")
    parser.add_argument("--unet-steps", type=int, default=MAIN_PHASE.steps,
                        help=f"U-Net + text encoder steps of the main phase (default: {MAIN_PHASE.steps})")
    parser.add_argument("--consolidation-steps", type=int, default=CONSOLIDATION_PHASE.steps,
                        help="steps of the consolidation phase that follows: constant learning rate, the moving "
                             f"average of the weights saved (default: {CONSOLIDATION_PHASE.steps}: the shipped "
                             "model has no such phase)")
    parser.add_argument("--consolidation-learning-rate", type=float, default=CONSOLIDATION_PHASE.learning_rate,
                        help=f"its learning rate (default: {CONSOLIDATION_PHASE.learning_rate:g}, which moved point 3 "
                             "faster than 1e-4 in BENCHMARKS.md)")
    parser.add_argument("--consolidation-max-loss-weight", type=float, default=CONSOLIDATION_PHASE.max_loss_weight,
                        help="cap of the 1/SNR loss weight in that phase (default: "
                             f"{CONSOLIDATION_PHASE.max_loss_weight:g}, the main phase's)")
    parser.add_argument("--continue-from", default=None, metavar="MODEL",
                        help="start the consolidation phase from this trained model folder instead of training "
                             "the autoencoder and the main phase (same result as a full run: each phase has its "
                             "own random streams)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="also keep each 500-step save under checkpoints/<phase>-<step>/ (default: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--vae-from", default=None,
                        help="load the autoencoder from this folder instead of training it (same result: "
                             "the U-Net phase has its own random streams)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    write_prompts(args.output, SEED)
    main_phase = dataclasses.replace(MAIN_PHASE, steps=args.unet_steps)
    consolidation = dataclasses.replace(CONSOLIDATION_PHASE, steps=args.consolidation_steps,
                                        learning_rate=args.consolidation_learning_rate,
                                        max_loss_weight=args.consolidation_max_loss_weight)
    if args.continue_from:
        pipe = StableDiffusionPipeline.from_pretrained(args.continue_from)
        components = {name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        phases = {"consolidation": consolidation}
    else:
        components = build_components(data.vocabulary(), os.path.join(args.output, "build"), TESTBED_SIZE, seed=SEED)
        if args.vae_from:
            components["vae"] = AutoencoderKL.from_pretrained(args.vae_from).eval().requires_grad_(False)
        else:
            train_vae(components["vae"], Sampler(SEED, SEED), args.vae_steps)
        phases = {"main": main_phase, "consolidation": consolidation}

    for name, phase in phases.items():
        def save(step: int, name=name) -> None:
            pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
            pipe.save_pretrained(os.path.join(args.output, "model"))
            if args.keep_checkpoints:
                pipe.save_pretrained(os.path.join(args.output, "checkpoints", f"{name}-{step}"))
            logger.info("saved %s (%s phase, step %d)", os.path.join(args.output, "model"), name, step)

        train_unet(components, phase, save)


if __name__ == "__main__":
    main()
