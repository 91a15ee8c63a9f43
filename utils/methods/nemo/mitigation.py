"""Script 4's neuron modes: which neurons each prompt generates with switched off (SPEC §5),
read from script 3's results."""

from __future__ import annotations

import functools
import random

from utils.cost import PromptCost
from utils.generation import Prepare, PromptCondition, caption_condition
from utils.layers import NeuronSet, count_neurons, value_layers
from utils.methods.nemo import RANDOM_NEURON_SEED, SCALING_FACTOR, selection
from utils.methods.nemo.deactivation import deactivate_neurons

# The global modes: one set for every prompt, counted over the refined sets of the prompts
TOP_K = {"block_top_k_neurons_per_layer": selection.top_k_per_layer,
         "block_top_k_neurons": selection.top_k_overall,
         "block_top_k_neuron_subgroups": selection.top_k_sets}


def neuron_sets(args, results, widths: list[int], rows: list[int]) -> list[NeuronSet]:
    """The neuron set of each row of ``results`` under the chosen mode; the global modes count
    over ``rows`` (the prompts of --memorization_type, as the authors filter before counting)."""
    refined = list(results["Refined Neurons"])
    if args.initial_neurons:
        return list(results["Initial Neurons"])
    if args.refined_neurons:
        return refined
    if args.block_random_neurons:
        rng = random.Random(RANDOM_NEURON_SEED)
        return [selection.random_like(neurons, widths, rng) for neurons in refined]
    for flag, pick in TOP_K.items():
        if getattr(args, flag) is not None:
            return [pick([refined[i] for i in rows], getattr(args, flag))] * len(results)
    raise ValueError("no neuron mode is chosen")


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


def per_prompt_cost(args) -> PromptCost:
    """Script 4's per-prompt neuron modes: no pass of their own; a pipeline call per prompt
    (each prompt's hooks switch its own neurons off)."""
    return PromptCost(own_call=True)


def prepare(pipe, args, neuron_sets: dict[int, NeuronSet | None]) -> Prepare:
    """Script 4's ``Prepare`` of a neuron mode."""
    return with_neurons(pipe, neuron_sets, args.scaling_factor)
