"""Asthana & Belagiannis's memorization score (ICLR 2026; script 2 ``--score anisotropy``):
the isotropic norm and the anisotropic alignment of the text guidance, both read on the
initial latents x_T [n, 4, h, w] without denoising.

With o_u, o_c the U-Net's unconditional and conditional outputs on x_T:
* norm: || o_c - o_u || over each latent at the norm's timestep t_n (the schedule's first);
  on a v-predicting model the authors' SD 2 branch scales it, sqrt(a_t) / (1 - a_t) || v_c - v_u ||;
* alignment: the cosine of two of o_u, o_c, o_c - o_u (``--anisotropy_mode``, default
  cos(o_u, o_c - o_u)) over the channels of each pixel, averaged over the pixels, at a
  low-noise timestep t_a (timesteps[-3]);
* score = gamma_1 * norm + gamma_2 * alignment, per latent; higher means memorized.

Both terms read the U-Net's output as it is (epsilon on SD 1.x, v on SD 2), as the authors'
``local_model/pipe.py`` does, not the noise it stands for. Defaults: ``utils.methods.anisotropy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.cost import Passes
from utils.diffusion import encode_prompts, initial_latents, prediction_type
from utils.methods.anisotropy import (ALIGNMENT_MODE, ALIGNMENT_TIMESTEP_INDEX, ALIGNMENT_WEIGHTS, NORM_TIMESTEP_INDEX,
                                      NORM_WEIGHTS)

UNET_CALLS = 2  # one [uncond, cond] batch at each of the two timesteps


def unet_sample_forwards(samples: int) -> int:
    """Latents through the U-Net to score a prompt on ``samples`` latents: both branches at
    both timesteps, 4 each (the authors' loop runs the next step's two calls too before it
    returns, 8 each)."""
    return UNET_CALLS * 2 * samples


def timestep_at(scheduler, num_inference_steps: int, index: int, flag: str) -> torch.Tensor:
    """The ``index``-th timestep of the ``num_inference_steps``-step schedule, a negative
    index counted from its end; ``flag`` names the index in the error."""
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    if not -len(timesteps) <= index < len(timesteps):
        raise ValueError(f"{flag} {index} is outside the {len(timesteps)}-step schedule (--num_inference_steps)")
    return timesteps[index]


def check_prediction_type(scheduler) -> str:
    kind = prediction_type(scheduler)
    if kind not in NORM_WEIGHTS:
        raise ValueError(f"--score anisotropy has the authors' epsilon (SD 1.4) and v-prediction (SD 2) forms; "
                         f"this model predicts {kind!r}")
    return kind


def difference_norm(scheduler, unconditional: torch.Tensor, conditional: torch.Tensor, t) -> torch.Tensor:
    """|| o_c - o_u || of each latent [n, 4, h, w] -> [n] (float32) at timestep t; a v model's
    scaled by sqrt(a_t) / (1 - a_t), the authors' SD 2 difference of (sqrt(a_t) v - x) / (1 - a_t)."""
    difference = conditional.float() - unconditional.float()  # [n, 4, h, w]
    if check_prediction_type(scheduler) == "v_prediction":
        alpha_bar = scheduler.alphas_cumprod[torch.as_tensor(t).long()].float().to(difference.device)
        difference = alpha_bar.sqrt() / (1 - alpha_bar).sqrt() ** 2 * difference  # their beta / beta_prod ** 2
    return difference.flatten(1).norm(dim=1)


def alignment(unconditional: torch.Tensor, conditional: torch.Tensor, mode: str = ALIGNMENT_MODE) -> torch.Tensor:
    """The cosine of ``mode``'s two vectors over the channels of each pixel, averaged over the
    pixels: [n, 4, h, w] twice -> [n] (float32)."""
    unconditional, conditional = unconditional.float(), conditional.float()
    vectors = {"x": unconditional, "x|c": conditional, "c|x": conditional - unconditional}
    first, second = mode.split(",")
    return F.cosine_similarity(vectors[first], vectors[second], dim=1).mean(dim=(1, 2))


@dataclass
class AnisotropyTerms:
    norm: torch.Tensor  # [n]
    alignment: torch.Tensor  # [n]

    def score(self, norm_weight: float, alignment_weight: float) -> torch.Tensor:
        return norm_weight * self.norm + alignment_weight * self.alignment  # [n]


@torch.no_grad()
def anisotropy_terms(pipe, embedding: torch.Tensor, latents: torch.Tensor, *, steps: int,
                     norm_index: int = NORM_TIMESTEP_INDEX, alignment_index: int = ALIGNMENT_TIMESTEP_INDEX,
                     mode: str = ALIGNMENT_MODE) -> AnisotropyTerms:
    """Both terms of each initial latent [n, 4, h, w] for the prompt embedding [1, 77, dim]
    (the empty prompt's is the unconditional one), on a ``steps``-step schedule."""
    unet, scheduler = pipe.unet, pipe.scheduler
    check_prediction_type(scheduler)
    n = len(latents)
    empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    embeddings = torch.cat([empty.expand(n, -1, -1), embedding.expand(n, -1, -1)]).to(unet.device, unet.dtype)
    latents = latents.to(unet.device, unet.dtype)

    def outputs(t):  # (o_u, o_c) [n, 4, h, w] on x_T at timestep t
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)  # [2n, 4, h, w]
        return unet(x, t, encoder_hidden_states=embeddings).sample.chunk(2)

    t_norm = timestep_at(scheduler, steps, norm_index, "--anisotropy_norm_timestep_index")
    t_alignment = timestep_at(scheduler, steps, alignment_index, "--anisotropy_alignment_timestep_index")
    norm = difference_norm(scheduler, *outputs(t_norm), t_norm)
    return AnisotropyTerms(norm.cpu(), alignment(*outputs(t_alignment), mode).cpu())


def weights(scheduler, args) -> tuple[float, float]:
    """(gamma_1, gamma_2): the flags, or the authors' for the model's prediction type."""
    kind = check_prediction_type(scheduler)
    norm_weight, alignment_weight = args.anisotropy_norm_weight, args.anisotropy_alignment_weight
    return (NORM_WEIGHTS[kind] if norm_weight is None else norm_weight,
            ALIGNMENT_WEIGHTS[kind] if alignment_weight is None else alignment_weight)


def score_cost(args) -> tuple[Passes, ...]:
    """Script 2's ``--score anisotropy`` per prompt: a U-Net call on [x_T, x_T] at each of the two timesteps."""
    return (Passes(UNET_CALLS, 2 * args.anisotropy_samples),)


def prompt_scores(pipe, _layers, latents: torch.Tensor, args, prompt: str) -> torch.Tensor:
    """Script 2's ``--score anisotropy``: per-latent scores [n]. The latents are drawn again
    from ``--anisotropy_seed`` (the authors' seed) in the shape of script 2's [n, 4, h, w]."""
    latents = initial_latents(args.anisotropy_seed, len(latents), latents.shape[1:])
    embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])
    terms = anisotropy_terms(pipe, embedding, latents, steps=args.num_inference_steps,
                             norm_index=args.anisotropy_norm_timestep_index,
                             alignment_index=args.anisotropy_alignment_timestep_index, mode=args.anisotropy_mode)
    return terms.score(*weights(pipe.scheduler, args))
