"""A model with neurons permanently removed: zeroed ``to_v`` rows (SPEC §1)."""

from __future__ import annotations

import torch

from utils.layers import NeuronSet, value_layers


@torch.no_grad()
def prune_value_neurons(unet, neurons: NeuronSet) -> None:
    """Zero the weight rows (and bias entries, if any) of ``neurons`` in place.

    With no bias (SD), this equals deactivating them with factor 0 for every input.
    """
    for layer, indices in zip(value_layers(unet).values(), neurons):
        if indices:
            layer.weight[indices] = 0  # weight [out_features, in_features]
            if layer.bias is not None:
                layer.bias[indices] = 0
