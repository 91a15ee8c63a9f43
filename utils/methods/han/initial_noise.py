"""Initial noise adjustment (Han et al., NeurIPS 2025), script 4's ``--han_batch_wise`` and
``--han_per_sample`` (rows of Table 1).

Both move each initial latent x_T [4, h, w] so that the text-conditional noise difference
d(x) = eps(x, t, y) - eps(x, t, "") at the schedule's first timestep t becomes small, x_T then
lying nearer the edge of the attraction basin, so that guidance no longer pulls the generation
into the memorized image. As in the authors' code (hygnhan/init_noise_diffusion_memorization,
``local_sd_pipeline.py``), both halves of d come from one U-Net call on [x, x] with the empty
prompt's and the caption's embeddings.

* Batch-wise (``adj_init_noise_batch_wise``): M times, with no gradient, delta = rho d / ||d||
  (per latent) and x <- x - gamma (d(x + delta) - d(x)); then the generation takes the
  unconditional prediction alone at steps 0..``apply_cfg_step`` and is guided after them.
* Per-sample (``adj_init_noise_per_sample``): each latent alone, AdamW on ||d(x)||_2, until
  the loss is at or below the target or after ``max_iterations`` U-Net passes; the generation
  is guided at every step.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

from utils.cost import BACKWARD, Passes, PromptCost
from utils.diffusion import encode_prompts, predicted_noise, schedule_timestep
from utils.generation import Prepare, PromptCondition, caption_condition
from utils.methods.han import (HAN_GAMMA, HAN_ITERATIONS, HAN_LEARNING_RATE, HAN_MAX_ITERATIONS, HAN_RHO,
                               HAN_TARGET_LOSS, HAN_TIMESTEP_INDEX)
from utils.models import frozen

logger = logging.getLogger(__name__)


def noise_difference(pipe, latents: torch.Tensor, timestep, embedding: torch.Tensor,
                     unconditional: torch.Tensor) -> torch.Tensor:
    """d(x) = eps(x, t, e) - eps(x, t, e_empty) [n, 4, h, w] in float32 for latents x [n, 4, h, w]
    (differentiable in x), from one U-Net call on [x, x] with the empty prompt's embedding
    [1, 77, dim] for the first half and ``embedding`` [1, 77, dim] for the second."""
    unet, scheduler = pipe.unet, pipe.scheduler
    n = len(latents)
    x_t = torch.cat([latents] * 2).to(unet.device, unet.dtype)  # [2n, 4, h, w]
    condition = torch.cat([unconditional.expand(n, -1, -1), embedding.expand(n, -1, -1)]).to(unet.device, unet.dtype)
    output = unet(scheduler.scale_model_input(x_t, timestep), timestep, encoder_hidden_states=condition).sample
    eps_unconditional, eps_conditional = predicted_noise(scheduler, output.float(), x_t, timestep).chunk(2)
    return eps_conditional - eps_unconditional


@dataclass
class Adjustment:
    latents: torch.Tensor  # [n, 4, h, w], float32: the adjusted x_T
    # ||d(x)|| of every latent ([n] each): batch-wise before each update, per-sample the first and last loss
    norms: list[list[float]]
    updates: list[int]  # updates of each latent
    unet_sample_forwards: int  # latents through the U-Net (each evaluation of d: 2 per latent)
    unet_sample_backwards: int  # latents backpropagated through the U-Net (2 per latent and update)


@torch.no_grad()
def batch_wise_adjustment(pipe, embedding: torch.Tensor, latents: torch.Tensor, *, steps: int, rho: float = HAN_RHO,
                          gamma: float = HAN_GAMMA, iterations: int = HAN_ITERATIONS,
                          timestep_index: int = HAN_TIMESTEP_INDEX) -> Adjustment:
    """Han et al.'s batch-wise adjustment of latents [n, 4, h, w] for the embedding [1, 77, dim]
    at the ``timestep_index``-th timestep of a ``steps``-step schedule: ``iterations`` times,
    delta = rho d(x) / ||d(x)|| (each latent its own norm) and x <- x - gamma (d(x + delta) - d(x)),
    all latents in the same U-Net calls, without gradients. Every operation is per latent, so
    a latent's result does not depend on the others in the batch."""
    timestep = schedule_timestep(pipe.scheduler, steps, timestep_index)
    unconditional = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    difference = functools.partial(noise_difference, pipe, timestep=timestep, embedding=embedding,
                                   unconditional=unconditional)
    x = latents.to(pipe.unet.device, torch.float32)
    norms = []
    for _ in range(iterations):
        d = difference(x)  # [n, 4, h, w]
        norm = d.square().sum(dim=(1, 2, 3), keepdim=True).sqrt()  # [n, 1, 1, 1]
        norms.append(norm.flatten().tolist())
        x = x - gamma * (difference(x + rho * (d / norm)) - d)
    n = len(latents)
    return Adjustment(x, norms, [iterations] * n, iterations * 2 * 2 * n, 0)


def batch_wise_cost(args) -> PromptCost:
    """Script 4's ``--han_batch_wise`` per prompt (``batch_wise_adjustment``'s passes, exact):
    two evaluations of d a ``--han_iterations`` update, each one U-Net call on [x, x] of all
    latents; the denoising loop then computes both halves at every step (its guidance schedule)."""
    return PromptCost((Passes(2 * args.han_iterations, 2 * args.num_samples),), both_halves=True)


def per_sample_adjustment(pipe, embedding: torch.Tensor, latents: torch.Tensor, *, steps: int,
                          learning_rate: float = HAN_LEARNING_RATE, max_iterations: int = HAN_MAX_ITERATIONS,
                          target_loss: float = HAN_TARGET_LOSS,
                          timestep_index: int = HAN_TIMESTEP_INDEX) -> Adjustment:
    """Han et al.'s per-sample adjustment of latents [n, 4, h, w] for the embedding [1, 77, dim]
    at the ``timestep_index``-th timestep of a ``steps``-step schedule: each latent x alone,
    AdamW on ||d(x)||_2 (torch's defaults besides the learning rate), stopping once the loss is
    <= ``target_loss`` or after ``max_iterations`` U-Net passes. The U-Net is frozen; x is
    optimized in float32 (the U-Net runs in its own dtype)."""
    unet = pipe.unet
    timestep = schedule_timestep(pipe.scheduler, steps, timestep_index)
    unconditional = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    adjusted, losses, updates = [], [], []
    with frozen(unet), torch.enable_grad():
        for latent in latents.split(1):
            x = latent.detach().to(unet.device, torch.float32).clone().requires_grad_(True)  # [1, 4, h, w]
            optimizer = torch.optim.AdamW([x], lr=learning_rate)
            sample_losses = []
            for _ in range(max_iterations):
                loss = torch.linalg.vector_norm(noise_difference(pipe, x, timestep, embedding, unconditional))
                sample_losses.append(loss.item())
                if sample_losses[-1] <= target_loss:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            adjusted.append(x.detach())
            losses.append(sample_losses)
            updates.append(len(sample_losses) - (sample_losses[-1] <= target_loss))
    evaluations = sum(len(sample_losses) for sample_losses in losses)
    norms = [[sample_losses[0] for sample_losses in losses], [sample_losses[-1] for sample_losses in losses]]
    return Adjustment(torch.cat(adjusted), norms, updates, 2 * evaluations, 2 * sum(updates))


def per_sample_cost(args) -> PromptCost:
    """Script 4's ``--han_per_sample`` per prompt (``per_sample_adjustment``'s passes): each
    latent alone, ``--han_max_iterations`` evaluations of d on [x, x], each backpropagated: an
    upper bound, a latent stops at the target loss."""
    return PromptCost((Passes(args.num_samples * args.han_max_iterations, 2, BACKWARD),),
                      estimate=f"Han per-sample: upper bound, {args.han_max_iterations} passes a latent (it stops "
                               f"at loss {args.han_target_loss})")


def delayed_guidance(apply_cfg_step: int, guidance_scale: float, step: int) -> float:
    """The authors' batch-wise schedule: the unconditional prediction alone (scale 0) at steps
    0..``apply_cfg_step``, ``guidance_scale`` after them."""
    return 0.0 if step <= apply_cfg_step else guidance_scale


def _record(adjustment: Adjustment, latents: torch.Tensor, start: float) -> dict:
    """What a prompt's record keeps of an adjustment: its effect and its cost."""
    shift = torch.linalg.vector_norm(adjustment.latents.cpu() - latents.float().cpu(), dim=(1, 2, 3))
    return dict(han_noise_difference_norms=[[round(v, 4) for v in norms] for norms in adjustment.norms],
                han_updates=adjustment.updates, han_latent_shift=[round(v, 4) for v in shift.tolist()],
                mitigation_unet_sample_forwards=adjustment.unet_sample_forwards,
                mitigation_unet_sample_backwards=adjustment.unet_sample_backwards,
                mitigation_seconds=round(time.perf_counter() - start, 3))


def prepare_batch_wise(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--han_batch_wise``: each prompt's n generation latents adjusted together (the
    authors' batch at ``-b 1``), generated with the unconditional prediction alone at steps
    0..``--han_apply_cfg_step`` and ``-g`` after them."""
    if args.guidance_scale <= 1:
        raise ValueError(f"--han_batch_wise delays classifier-free guidance and needs -g above 1, got {args.guidance_scale}")
    if args.han_apply_cfg_step >= args.steps - 1:
        logger.warning("--han_apply_cfg_step %d: no step of the %d is guided", args.han_apply_cfg_step, args.steps)
    schedule = functools.partial(delayed_guidance, args.han_apply_cfg_step, args.guidance_scale)

    def adjusted(_index: int, caption: str, latents: torch.Tensor) -> PromptCondition:
        start = time.perf_counter()
        condition = caption_condition(pipe, caption)
        adjustment = batch_wise_adjustment(pipe, condition.embedding, latents, steps=args.steps, rho=args.han_rho,
                                           gamma=args.han_gamma, iterations=args.han_iterations)
        condition.latents, condition.guidance = adjustment.latents, schedule
        condition.record = _record(adjustment, latents, start)
        return condition

    return adjusted


def prepare_per_sample(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--han_per_sample``: each of a prompt's generation latents optimized alone, then
    generated with ``-g`` at every step."""

    def adjusted(_index: int, caption: str, latents: torch.Tensor) -> PromptCondition:
        start = time.perf_counter()
        condition = caption_condition(pipe, caption)
        adjustment = per_sample_adjustment(pipe, condition.embedding, latents, steps=args.steps,
                                           learning_rate=args.han_learning_rate,
                                           max_iterations=args.han_max_iterations, target_loss=args.han_target_loss)
        condition.latents = adjustment.latents
        condition.record = _record(adjustment, latents, start)
        return condition

    return adjusted
