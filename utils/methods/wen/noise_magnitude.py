"""Wen et al. (ICLR 2024): the magnitude of the text-conditional noise prediction, as a
memorization score (``prompt_scores``, script 2) and as the objective of their inference-time
mitigation (``prepare``, script 4; Table 1, "prompt embedding adjustment").

The text-conditional noise difference of latents x [n, 4, h, w] at timestep t is
eps(x, t, e) - eps(x, t, e_empty). Defaults are the authors' (YuxinWenRick/diffusion_memorization):
the mitigation from ``inference_mem.py`` with their README's command, the score from
``detect_mem.py`` and the aggregation of ``examples/det_mem_viz.ipynb``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from utils.cost import BACKWARD, Passes, PromptCost
from utils.defaults import GENERATION_STEPS, GUIDANCE_SCALE
from utils.diffusion import encode_prompts, predicted_noise, schedule_timestep
from utils.generation import Prepare, PromptCondition, caption_condition, stop_after
from utils.hooks import edit_calls, edit_outputs
from utils.methods.wen import (WEN_LEARNING_RATE, WEN_MAX_ITERATIONS, WEN_SCORE_GUIDANCE_SCALE, WEN_SCORE_STEPS,
                               WEN_TARGET_LOSS, WEN_TARGET_STEP)
from utils.models import frozen


def _unconditional(pipe, n: int) -> torch.Tensor:
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).expand(n, -1, -1)  # [n, 77, dim]


@dataclass
class Adjustment:
    embedding: torch.Tensor  # [1, 77, dim], float32
    losses: list[float]  # the loss before each update (the last one: where it stopped)
    unet_sample_forwards: int  # latents through the U-Net (the optimization's also backpropagated, but the last)


@torch.no_grad()
def denoised_latents(pipe, embedding: torch.Tensor, latents: torch.Tensor, steps: int, guidance_scale: float,
                     until: int) -> torch.Tensor:
    """x_{t_until} [n, 4, h, w]: the latents x_T after the first ``until`` steps of the
    ``steps``-step generation from the embedding [1, 77, dim] (guided by the empty prompt)."""
    unet = pipe.unet
    n = len(latents)
    return pipe(prompt_embeds=embedding.to(unet.device, unet.dtype).expand(n, -1, -1),
                negative_prompt_embeds=_unconditional(pipe, n).to(unet.dtype),
                latents=latents.to(unet.device, unet.dtype), num_inference_steps=steps, guidance_scale=guidance_scale,
                output_type="latent", callback_on_step_end=stop_after(until)).images


def adjust_embedding(pipe, embedding: torch.Tensor, latents: torch.Tensor, *, timestep_index: int = WEN_TARGET_STEP,
                     steps: int = GENERATION_STEPS, guidance_scale: float = GUIDANCE_SCALE,
                     learning_rate: float = WEN_LEARNING_RATE, max_iterations: int = WEN_MAX_ITERATIONS,
                     target_loss: float = WEN_TARGET_LOSS) -> Adjustment:
    """Wen et al.'s mitigation: minimize || eps(x_t, t, e) - eps(x_t, t, e_empty) || over the
    prompt embedding e [1, 77, dim], one L2 norm over all latents [n, 4, h, w], at the
    ``timestep_index``-th timestep t of a ``steps``-step schedule, with AdamW; stop once the
    loss is <= ``target_loss`` or after ``max_iterations`` U-Net passes. x_t is x_T at index 0;
    at a later index, as the authors' ``aug_prompt`` (local_sd_pipeline.py), the latents x_T
    denoised to t by the generation with the original embedding and ``guidance_scale``. The
    U-Net is frozen; the BOS position is not optimized (the authors zero its gradient).
    Optimized in float32 (AdamW on float16 turns the zero BOS gradient into NaN)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    timestep = schedule_timestep(scheduler, steps, timestep_index)
    n = len(latents)
    denoising_forwards = timestep_index * n * (2 if guidance_scale > 1 else 1)
    if timestep_index:
        latents = denoised_latents(pipe, embedding, latents, steps, guidance_scale, until=timestep_index)
    x_t = latents.to(unet.device, unet.dtype)
    x = scheduler.scale_model_input(x_t, timestep)

    def noise(embedding: torch.Tensor) -> torch.Tensor:  # eps(x_t, t, e) [n, 4, h, w], float32
        output = unet(x, timestep, encoder_hidden_states=embedding.to(unet.dtype).expand(n, -1, -1)).sample
        return predicted_noise(scheduler, output.float(), x_t, timestep)

    with torch.no_grad():  # the empty prompt's prediction does not depend on e
        unconditional = noise(_unconditional(pipe, n))
    adjusted = embedding.detach().to(unet.device, torch.float32).clone().requires_grad_(True)
    bos = adjusted.detach()[:, :1].clone()
    optimizer = torch.optim.AdamW([adjusted], lr=learning_rate)
    losses = []
    with frozen(unet), torch.enable_grad():
        for _ in range(max_iterations):
            loss = torch.linalg.vector_norm(noise(adjusted) - unconditional)
            losses.append(loss.item())
            if loss.item() <= target_loss:
                break
            optimizer.zero_grad()
            loss.backward()
            adjusted.grad[:, 0] = 0
            optimizer.step()
            with torch.no_grad():
                adjusted[:, :1] = bos  # weight decay would still move BOS; the authors' bf16 rounds it away
    return Adjustment(adjusted.detach(), losses, denoising_forwards + n * (len(losses) + 1))


def adjustment_cost(args) -> PromptCost:
    """Script 4's ``--wen`` per prompt (``adjust_embedding``'s passes): the denoising to the
    loss's timestep past the first, the empty prompt's prediction and ``--wen_max_iterations``
    passes, each backpropagated: an upper bound, the optimization stops at the target loss."""
    n = min(args.wen_samples, args.num_samples)
    passes = (Passes(args.wen_timestep_index, n * (2 if args.guidance_scale > 1 else 1)),) if args.wen_timestep_index else ()
    return PromptCost(passes + (Passes(1, n), Passes(args.wen_max_iterations, n, BACKWARD)),
                      estimate=f"Wen: upper bound, {args.wen_max_iterations} passes a prompt (it stops at loss "
                               f"{args.wen_target_loss})")


def score_cost(args) -> tuple[Passes, ...]:
    """Script 2's ``--score wen`` per prompt: the first ``--wen_score_steps`` steps of a guided
    generation of ``--wen_samples`` latents, both halves at each."""
    return (Passes(args.wen_score_steps, 2 * args.wen_samples),)


@torch.no_grad()
def noise_magnitude_scores(pipe, embedding: torch.Tensor, latents: torch.Tensor, *, steps: int = GENERATION_STEPS,
                           guidance_scale: float = WEN_SCORE_GUIDANCE_SCALE,
                           score_steps: int = WEN_SCORE_STEPS) -> torch.Tensor:
    """Wen et al.'s detection score of each latent [n, 4, h, w]: || eps_c - eps_u || (unscaled)
    at each of the first ``score_steps`` steps of a guided ``steps``-step generation from the
    embedding [1, 77, dim], averaged over those steps: [n]. Higher means memorized."""
    if not 1 <= score_steps <= steps:
        raise ValueError(f"--wen_score_steps {score_steps} must be between 1 and the {steps} generation steps")
    if guidance_scale <= 1:
        raise ValueError(f"the score needs a guided generation (guidance scale > 1), got {guidance_scale}")
    unet = pipe.unet
    norms = []  # per step [n]
    inputs = []  # the (x_t [2n, 4, h, w], t) of the U-Net call being run

    def keep_input(args, kwargs, _name):
        inputs[:] = [args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"]]
        return args, kwargs

    def record(output, _name):
        prediction = output[0] if isinstance(output, tuple) else output.sample  # [2n, 4, h, w]: [uncond, cond]
        eps = predicted_noise(pipe.scheduler, prediction.float(), *inputs)
        unconditional, conditional = eps.chunk(2)
        norms.append((conditional - unconditional).flatten(1).norm(dim=1).cpu())

    n = len(latents)
    with edit_calls({"unet": unet}, keep_input), edit_outputs({"unet": unet}, record):
        pipe(prompt_embeds=embedding.to(unet.device, unet.dtype).expand(n, -1, -1),
             negative_prompt_embeds=_unconditional(pipe, n).to(unet.dtype), latents=latents.to(unet.device, unet.dtype),
             num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
             callback_on_step_end=stop_after(score_steps))
    return torch.stack(norms[:score_steps]).mean(0)  # [n]


def prepare(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--wen``: the caption's embedding adjusted on the prompt's first
    ``--wen_samples`` generation latents (denoised to the loss's timestep by the generation's
    ``--steps`` and ``-g`` when it is not the first), then used for all of its images."""

    def adjusted(_index: int, caption: str, latents) -> PromptCondition:
        start = time.perf_counter()
        condition = caption_condition(pipe, caption)
        adjustment = adjust_embedding(pipe, condition.embedding, latents[: args.wen_samples],
                                      timestep_index=args.wen_timestep_index, steps=args.steps,
                                      guidance_scale=args.guidance_scale, learning_rate=args.wen_learning_rate,
                                      max_iterations=args.wen_max_iterations, target_loss=args.wen_target_loss)
        condition.embedding = adjustment.embedding
        condition.record = dict(wen_losses=[round(l, 4) for l in adjustment.losses],
                                mitigation_unet_sample_forwards=adjustment.unet_sample_forwards,
                                mitigation_seconds=round(time.perf_counter() - start, 3))
        return condition

    return adjusted


def prompt_scores(pipe, _layers, latents: torch.Tensor, args, prompt: str) -> torch.Tensor:
    """Script 2's ``--score wen``: per-sample scores [n] of latents [n, 4, h, w]."""
    embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])
    return noise_magnitude_scores(pipe, embedding, latents, steps=args.num_inference_steps,
                                  guidance_scale=args.wen_guidance_scale, score_steps=args.wen_score_steps)
