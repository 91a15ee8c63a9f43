"""Adversarial fine-tuning against Dori's attack (Kowalczuk, Hintersdorf, Struppek et al.,
"Finding Dori", §4.4): alternate the attack with updates of every U-Net weight, so that the
adversarial embeddings denoise towards a surrogate image (what the mitigated model draws for
the prompt) while the ordinary denoising loss on other image-caption pairs keeps the model's
utility. Its defaults, with their sources, are in ``utils.methods.dori``.
"""

from __future__ import annotations

import copy
import functools
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.diffusion import encode_prompts
from utils.distributed import (Shard, all_reduce_sum, barrier, gather_by_index, require_same, sum_gradients,
                               weights_checksum)
from utils.files import read_csv
from utils.generation import Prepare, generate_prompt_images, generation_latents
from utils.images import load_images
from utils.methods.dori import (ATTACK_BATCH, ATTACK_LEARNING_RATE, ATTACK_SEED, ATTACK_STEPS, DISTILLATION_WEIGHT,
                                FINETUNE_EPOCHS, FINETUNE_LEARNING_RATE, RANK_SEED_STRIDE, SCHEDULE, SCHEDULES,
                                UTILITY_EMPTY_CAPTION_SHARE, UTILITY_WEIGHT)
from utils.methods.dori.attack import attack, denoising_loss, image_latents

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (torch.optim.AdamW, fused=)


@dataclass
class FinetuneTarget:
    """A memorized image to erase: its latent, the prompt's embedding (the attack's start) and
    the surrogate latent the adversarial embeddings should denoise towards instead."""

    latent: torch.Tensor  # [1, 4, h, w]
    embedding: torch.Tensor  # [1, 77, dim]
    surrogate: torch.Tensor  # [1, 4, h, w]

    def to(self, device) -> "FinetuneTarget":
        return FinetuneTarget(self.latent.to(device), self.embedding.to(device), self.surrogate.to(device))


def surrogate_targets(pipe, prepare: Prepare, prompts: list[tuple[int, str, str]], *, steps: int,
                      seed: int, shard: Shard = Shard()) -> list[FinetuneTarget]:
    """A target per (row, caption, training image path) of ``prompts``, in an order shuffled with
    ``seed``: the surrogate is the first image the model draws under ``prepare`` (NeMo's
    mitigation) from script 4's first initial latent [1, 4, h, w] in ``steps`` DDIM steps.
    With a ``shard`` of several processes (in their group) each makes its share of the targets
    (``Shard.indices``) and every process gets them all."""
    first_latent = generation_latents(pipe.unet)[:1]
    mine = {}
    for i in shard.indices(len(prompts)):
        row, caption, path = prompts[i]
        condition = prepare(row, caption, first_latent)
        surrogate = generate_prompt_images(pipe, condition, first_latent, steps=steps)[0]
        mine[i] = FinetuneTarget(image_latents(pipe, load_images([path])), condition.embedding,
                                 image_latents(pipe, [surrogate])).to("cpu")  # a pickle names the device
    targets = [target.to(pipe.unet.device) for target in gather_by_index(shard, mine).values()]
    random.Random(seed).shuffle(targets)
    return targets


def random_states() -> dict:
    """The global random generators' states (torch's CPU one and that of the current GPU once CUDA
    is in use, Python's, NumPy's)."""
    import numpy as np

    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
                python=random.getstate(), numpy=np.random.get_state())


def restore_random_states(states: dict) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def update_images(images: int, schedule: str, processes: int) -> list[list[int]]:
    """The memorized images (indices of the targets) of each update of an epoch: one an update
    under ``single``; under ``images``, ``processes`` consecutive ones (the last update of an
    epoch takes the rest), ceil(images / processes) updates."""
    if schedule not in SCHEDULES:
        raise ValueError(f"the schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    group = processes if schedule == "images" else 1
    return [list(range(first, min(first + group, images))) for first in range(0, images, group)]


def adversarial_finetune(pipe, targets: list[FinetuneTarget], utility: Callable[[torch.Generator], tuple],
                         *, epochs: int = FINETUNE_EPOCHS, learning_rate: float = FINETUNE_LEARNING_RATE,
                         attack_steps: int = ATTACK_STEPS, attack_learning_rate: float = ATTACK_LEARNING_RATE,
                         attack_batch: int = ATTACK_BATCH, seed: int = ATTACK_SEED, utility_weight: float = UTILITY_WEIGHT,
                         distillation_weight: float = DISTILLATION_WEIGHT, progress=None,
                         compute_dtype: torch.dtype = torch.float32, checkpoint_every: int = 0,
                         save_checkpoint: Callable[[dict], None] | None = None,
                         resume: dict | None = None, shard: Shard = Shard(), schedule: str = SCHEDULE) -> list[dict]:
    """Adversarial fine-tuning of every U-Net weight, in place.

    The weights stay in their own (float32) precision; a ``compute_dtype`` of float16 or
    bfloat16 runs the attack and the losses under autocast (mixed precision), float16 with a
    gradient scaler so that small gradients do not underflow.

    For each epoch and memorized image: attack the current model from the prompt's embedding,
    then take one optimizer step on L_adv + utility_weight * L_utility, where L_adv is the
    denoising loss of the surrogate latent under the adversarial embedding and L_utility that of
    ``utility(generator) -> (latents [b, 4, h, w], embeddings [b, 77, dim])``, other pairs;
    with ``distillation_weight`` > 0, plus that weight times the distillation loss on the same
    pairs towards a frozen copy of the U-Net as it was before the first update.

    With a ``shard`` of N > 1 processes (inside their process group) the gradients of each
    update are summed over the processes and every process takes the same step:

    * ``schedule="images"``: an update takes N memorized images (``update_images``), process r
      attacks the r-th and computes the single-process loss of it with its own utility pairs
      (its generator is seeded ``seed + RANK_SEED_STRIDE * r``), and the gradient is the mean
      over the update's images: ceil(M / N) updates an epoch of effective batch N.
    * ``schedule="single"``: the single-process updates; every process draws the whole batch's
      noise, timesteps and utility pairs from the same stream and runs the U-Net on its part
      (``Shard.batch_slice``) of the attack's noise samples and of the utility pairs: the
      gradients are one process's up to float rounding, which AdamW (each gradient divided by
      its running magnitude) can turn into a step of up to the learning rate on the rare weight
      whose gradient is near zero.

    After every update the processes' ``weights_checksum`` must agree (a RuntimeError
    otherwise); the history records it. The losses recorded are those of the whole update.

    Every ``checkpoint_every`` updates (0: never) ``save_checkpoint(state)`` (called on rank 0
    only; every process waits until it returns) gets the state a run continues from
    (``resume``, read by every process): the U-Net's weights, the optimizer's and the gradient
    scaler's states, each process's random generators, the history and the updates done. The
    U-Net must then be the model before the first update (the distillation target), and the run
    ends with the weights an uninterrupted one ends with. An ``images`` checkpoint continues
    under as many processes; a ``single`` one under any number (from rank 0's generators when
    the number differs: every process's stream is the same).
    Returns one record per update (losses, seconds); the U-Net is left without gradients.
    """
    unet = pipe.unet
    original = copy.deepcopy(unet).eval().requires_grad_(False) if distillation_weight > 0 else None
    # The fused kernel updates each weight in place; torch's default (foreach) step holds one more
    # copy of all weights as a temporary (0.2-0.4 GiB less at the peak at SD's size, BENCHMARKS.md).
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, fused=unet.device.type in FUSED_ADAMW_DEVICES)
    scaler = torch.amp.GradScaler(unet.device.type, enabled=compute_dtype == torch.float16)
    mixed = functools.partial(torch.autocast, unet.device.type, dtype=compute_dtype,
                              enabled=compute_dtype != unet.dtype)
    split = schedule == "single" and shard.world_size > 1  # the processes split every batch
    schedule_images = update_images(len(targets), schedule, shard.world_size)
    generator = torch.Generator("cpu").manual_seed(seed if split else seed + RANK_SEED_STRIDE * shard.rank)
    history = []
    if resume:
        saved = resume["ranks"]
        if len(saved) != shard.world_size and schedule != "single":
            raise ValueError(f"a checkpoint of the {schedule!r} schedule continues under the {len(saved)} processes "
                             f"that wrote it, not {shard.world_size}")
        own = saved[shard.rank] if len(saved) == shard.world_size else saved[0]
        unet.load_state_dict(resume["unet"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        generator.set_state(own["generator"])
        restore_random_states(own["random"])
        history = list(resume["history"])

    def process_loss(epoch: int, images: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's loss of the update of ``images`` (a constant 0 without an image) and its
        addends of the update's losses [4] (attack, adversarial, utility, distillation)."""
        index = images[0] if split else images[shard.rank] if shard.rank < len(images) else None
        if index is None:  # the last update of an epoch has fewer images than processes
            return torch.zeros((), device=unet.device), torch.zeros(4, dtype=torch.float64, device=unet.device)
        weight = 1.0 if split else 1 / len(images)  # of this process's image in the update's mean
        parts = shard if split else Shard()  # its parts of the attack's noise samples and of the utility pairs
        target = targets[index]
        unet.eval()
        with mixed():
            found = attack(pipe, target.latent, target.embedding, steps=attack_steps,
                           learning_rate=attack_learning_rate, batch=attack_batch, seed=seed + 1000 * epoch + index,
                           shard=parts)
        unet.train()
        with torch.enable_grad(), mixed():
            surrogate = target.surrogate.to(unet.device, unet.dtype).expand(attack_batch, -1, -1, -1)
            adversarial = weight * parts.batch_share(attack_batch) * denoising_loss(
                pipe, surrogate, found.embedding.expand(attack_batch, -1, -1), generator,
                parts.batch_slice(attack_batch))
            latents, embeddings = utility(generator)
            latents = latents.to(unet.device, unet.dtype)
            pairs, share = parts.batch_slice(len(latents)), weight * parts.batch_share(len(latents))
            kept = share * denoising_loss(pipe, latents, embeddings, generator, pairs)
            loss = adversarial + utility_weight * kept
            anchored = torch.zeros(())
            if original is not None:
                anchored = share * distillation_loss(pipe, original, latents, embeddings, generator, pairs)
                loss = loss + distillation_weight * anchored
        attack_weight = float(shard.rank == 0) if split else weight  # split: the whole batch's loss, counted once
        return loss, torch.tensor([attack_weight * found.losses[-1], adversarial.item(), kept.item(), anchored.item()],
                                  dtype=torch.float64, device=unet.device)

    updates = tqdm(total=epochs * len(schedule_images), initial=len(history), desc="fine-tuning updates",
                   unit="update", leave=False)
    for epoch in range(epochs):
        for number, images in enumerate(schedule_images):
            if epoch * len(schedule_images) + number < len(history):
                continue  # done before the checkpoint this run continues
            start = time.perf_counter()
            optimizer.zero_grad()
            loss, losses = process_loss(epoch, images)
            scaled = scaler.scale(loss)  # every process: the scaler's state starts with its first scale
            if scaled.requires_grad:  # not for empty parts
                with torch.enable_grad():
                    scaled.backward()
            sum_gradients(shard, unet.parameters())
            all_reduce_sum(shard, [losses])
            scaler.step(optimizer)
            scaler.update()
            unet.eval()
            updates.update()
            checksum = weights_checksum(unet)
            require_same(shard, checksum, f"U-Net weights after update {len(history) + 1} (their checksums)")
            attack_loss, adversarial_loss, utility_loss, distillation = losses.tolist()
            history.append(dict(epoch=epoch, images=images, attack_loss=attack_loss, adversarial_loss=adversarial_loss,
                                utility_loss=utility_loss,
                                distillation_loss=distillation if original is not None else None,
                                weights_checksum=checksum, seconds=round(time.perf_counter() - start, 3)))
            if save_checkpoint and checkpoint_every and len(history) % checkpoint_every == 0:
                mine = dict(generator=generator.get_state(), random=random_states())
                ranks = gather_by_index(shard, {shard.rank: mine})
                if shard.rank == 0:
                    save_checkpoint(dict(unet=unet.state_dict(), optimizer=optimizer.state_dict(),
                                         scaler=scaler.state_dict(), ranks=list(ranks.values()), history=history))
                barrier(shard)  # a launcher that ends every process when one dies cannot cut the checkpoint short
            if progress:
                progress(history[-1])
    updates.close()
    optimizer.zero_grad(set_to_none=True)  # the last update's gradients: a U-Net's size, needed no more
    return history


def utility_sampler(pipe, path: str, batch: int, empty_caption_share: float = UTILITY_EMPTY_CAPTION_SHARE):
    """generator -> (latents [b, 4, h, w], embeddings [b, 77, dim]) of random pairs of the
    ``Caption;Image`` file at ``path`` (image paths relative to the file); each pair's caption
    is the empty prompt with probability ``empty_caption_share`` (the caption dropout of SD's
    training), so the unconditional branch that classifier-free guidance reads is kept too."""
    if not 0 <= empty_caption_share <= 1:
        raise ValueError(f"the empty-caption share must be in [0, 1], got {empty_caption_share}")
    frame = read_csv(path, ("Caption", "Image"), "utility data file")
    if frame.empty:
        raise ValueError(f"utility data file {path} has no rows")
    folder = os.path.dirname(os.path.abspath(path))
    paths = [os.path.join(folder, p) for p in frame["Image"]]

    @functools.cache
    @torch.no_grad()  # inputs of the loss, not trained: no text-encoder graph to keep
    def pair(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # read and encoded once: [1, 4, h, w], [1, 77, dim]
        return (image_latents(pipe, load_images([paths[i]])),
                encode_prompts(pipe.tokenizer, pipe.text_encoder, [frame["Caption"][i]]))

    with torch.no_grad():
        empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])  # [1, 77, dim]

    def sample(generator: torch.Generator):
        picks = torch.randint(0, len(frame), (batch,), generator=generator).tolist()
        latents, embeddings = zip(*(pair(i) for i in picks))
        if empty_caption_share > 0:  # no extra draw otherwise: runs without it keep their stream
            dropped = (torch.rand(batch, generator=generator) < empty_caption_share).tolist()
            embeddings = [empty if drop else embedding for drop, embedding in zip(dropped, embeddings)]
        return torch.cat(latents), torch.cat(embeddings)

    return sample


def distillation_loss(pipe, original, latents: torch.Tensor, embeddings: torch.Tensor,
                      generator: torch.Generator, part: slice = slice(None)) -> torch.Tensor:
    """MSE between the U-Net's and the frozen ``original`` U-Net's predictions for latents
    [b, 4, h, w] noised at a timestep per latent, with conditions [b, 77, dim]: zero until the
    fine-tuned model's behaviour on these pairs drifts (whatever the U-Net predicts). With
    ``part``, over those items only, from the whole batch's draws (as ``denoising_loss``)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    latents, embeddings, timesteps, noise = latents[part], embeddings[part], timesteps[part], noise[part]
    if not len(latents):
        return torch.zeros((), device=unet.device)
    noise = noise.to(latents.device, latents.dtype)
    noisy, timesteps = scheduler.add_noise(latents, noise, timesteps.to(latents.device)), timesteps.to(unet.device)
    conditions = embeddings.to(unet.dtype)
    with torch.no_grad():
        target = original(noisy, timesteps, encoder_hidden_states=conditions).sample
    return F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=conditions).sample.float(), target.float())
