"""Switching value neurons off (SPEC §1): their output features scaled by a factor (0 by
default) in every call of the value layers while a context is open, one neuron set for the
whole batch or one per slice of it (candidate sets scored in one U-Net call)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from utils.hooks import edit_outputs
from utils.layers import NeuronSet


def neuron_masks(
    neuron_sets: Sequence[NeuronSet], widths: list[int], factor: float, device, dtype
) -> list[torch.Tensor | None]:
    """Per layer a multiplier [n_sets, 1, 1, features] (None where no set touches the layer)."""
    masks: list[torch.Tensor | None] = []
    for layer, width in enumerate(widths):
        if not any(neurons[layer] for neurons in neuron_sets):
            masks.append(None)
            continue
        mask = torch.ones(len(neuron_sets), 1, 1, width, device=device, dtype=dtype)
        for s, neurons in enumerate(neuron_sets):
            mask[s, 0, 0, list(neurons[layer])] = factor
        masks.append(mask)
    return masks


@contextmanager
def deactivate_neurons(layers: dict[str, nn.Linear], neurons: NeuronSet, factor: float = 0.0) -> Iterator[None]:
    """Scale the output features ``neurons`` of the value layers by ``factor`` (SPEC §1),
    for every token and batch element of every call while the context is open."""
    with deactivate_per_slice(layers, [neurons], factor):
        yield


@contextmanager
def deactivate_per_slice(
    layers: dict[str, nn.Linear], neuron_sets: Sequence[NeuronSet], factor: float = 0.0,
    slice_sizes: Sequence[int] | None = None,
) -> Iterator[None]:
    """Like ``deactivate_neurons`` with S sets: the batch is cut into S consecutive slices and
    slice s gets ``neuron_sets[s]``, so S candidate sets share one U-Net call. The slices are
    equal unless ``slice_sizes`` gives each one's batch elements."""
    widths = [layer.out_features for layer in layers.values()]
    weight = next(iter(layers.values())).weight
    masks = dict(zip(layers, neuron_masks(neuron_sets, widths, factor, weight.device, weight.dtype)))
    n_sets = len(neuron_sets)
    if slice_sizes is not None:
        if len(slice_sizes) != n_sets:
            raise ValueError(f"{len(slice_sizes)} slice sizes for {n_sets} neuron sets")
        repeats = torch.as_tensor(list(slice_sizes), device=weight.device)
        # per batch element its slice's multiplier: [batch, 1, features]
        masks = {name: None if mask is None else mask[:, 0].repeat_interleave(repeats, dim=0)
                 for name, mask in masks.items()}

    def scale(output: torch.Tensor, name: str) -> torch.Tensor | None:
        mask = masks[name]
        if mask is None:
            return None
        batch = output.shape[0]  # [batch, tokens, features]
        if slice_sizes is not None:
            if batch != mask.shape[0]:
                raise ValueError(f"a batch of {batch} does not match slices of {sum(slice_sizes)}")
            return output * mask
        if batch % n_sets:
            raise ValueError(f"a batch of {batch} cannot be cut into {n_sets} neuron-set slices")
        sliced = output.reshape(n_sets, batch // n_sets, *output.shape[1:])
        return (sliced * mask).reshape(output.shape)

    with edit_outputs(layers, scale):
        yield
