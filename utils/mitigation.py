"""Script 4's settings: how each prompt is generated under a mitigation (SPEC §5, Table 1).

Each function returns a ``Prepare`` (``utils.generation``): prompt index, caption and
initial latents -> the prompt's ``PromptCondition``. The methods themselves live in their
own modules (``utils.nemo`` for NeMo's neurons, ``utils.baselines.wen``, ``ren`` and
``random_tokens``); this is where script 4 and the Table-1 command pick one.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from utils.baselines import random_tokens, ren, wen
from utils.defaults import (GENERATION_STEPS, GUIDANCE_SCALE, RANDOM_TOKEN_SEED, REN_BOS_LOGIT_FACTOR,
                            REN_MASK_PADDING, SCALING_FACTOR, WEN_LEARNING_RATE, WEN_MAX_ITERATIONS,
                            WEN_OPTIMIZATION_SAMPLES, WEN_TARGET_LOSS, WEN_TARGET_STEP)
from utils.generation import PromptCondition, Prepare, caption_condition
from utils.hooks import deactivate_neurons
from utils.layers import NeuronSet, count_neurons, value_layers


def with_neurons(pipe, neuron_sets: dict[int, NeuronSet | None], factor: float = SCALING_FACTOR) -> Prepare:
    """Each prompt with its neurons (``neuron_sets[prompt]``, None: none) scaled by ``factor``."""
    layers = value_layers(pipe.unet)

    def prepare(index: int, caption: str, _latents) -> PromptCondition:
        condition = caption_condition(pipe, caption)
        neurons = neuron_sets.get(index)
        if neurons and count_neurons(neurons):
            condition.intervention = functools.partial(deactivate_neurons, layers, neurons, factor)
        condition.record = dict(neurons=count_neurons(neurons) if neurons else 0)
        return condition

    return prepare


@dataclass(frozen=True)
class WenSettings:
    learning_rate: float = WEN_LEARNING_RATE
    max_iterations: int = WEN_MAX_ITERATIONS
    target_loss: float = WEN_TARGET_LOSS
    timestep_index: int = WEN_TARGET_STEP
    samples: int = WEN_OPTIMIZATION_SAMPLES  # the first latents of the prompt's generation


def with_adjusted_embedding(pipe, settings: WenSettings = WenSettings(), steps: int = GENERATION_STEPS,
                            guidance_scale: float = GUIDANCE_SCALE) -> Prepare:
    """Wen et al.: the caption's embedding adjusted on the prompt's first ``settings.samples``
    generation latents (denoised to the loss's timestep by the generation's ``steps`` and
    ``guidance_scale`` when it is not the first), then used for all of its images."""

    def prepare(_index: int, caption: str, latents) -> PromptCondition:
        start = time.perf_counter()
        condition = caption_condition(pipe, caption)
        adjustment = wen.adjust_embedding(pipe, condition.embedding, latents[: settings.samples],
                                          timestep_index=settings.timestep_index, steps=steps,
                                          guidance_scale=guidance_scale, learning_rate=settings.learning_rate,
                                          max_iterations=settings.max_iterations, target_loss=settings.target_loss)
        condition.embedding = adjustment.embedding
        condition.record = dict(wen_losses=[round(l, 4) for l in adjustment.losses],
                                mitigation_unet_sample_forwards=adjustment.unet_sample_forwards,
                                mitigation_seconds=round(time.perf_counter() - start, 3))
        return condition

    return prepare


def with_attention_scaling(pipe, factor: float = REN_BOS_LOGIT_FACTOR, mask_padding: bool = REN_MASK_PADDING,
                           guidance_scale: float = GUIDANCE_SCALE) -> Prepare:
    """Ren et al.: the caption's BOS attention logit scaled, padding keys masked, at every step."""

    def prepare(_index: int, caption: str, _latents) -> PromptCondition:
        condition = caption_condition(pipe, caption)
        length = ren.prompt_length(pipe.tokenizer, caption)
        condition.intervention = functools.partial(ren.scale_attention, pipe.unet, length, guidance_scale > 1,
                                                   factor, mask_padding)
        condition.record = dict(prompt_tokens=length)
        return condition

    return prepare


def with_random_tokens(pipe, count: int, seed: int = RANDOM_TOKEN_SEED) -> Prepare:
    """Somepalli et al.: ``count`` random vocabulary tokens inserted into the caption."""

    def prepare(index: int, caption: str, _latents) -> PromptCondition:
        changed, added = random_tokens.add_random_tokens(caption, pipe.tokenizer, count,
                                                         random_tokens.prompt_rng(seed, index))
        condition = caption_condition(pipe, changed)
        condition.record = dict(caption_used=changed, added_tokens=added)
        return condition

    return prepare
