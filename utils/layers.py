"""Discovery of the layers the methods act on, by dotted name in execution order: NeMo's
cross-attention value layers (SPEC §1), Wanda's feed-forward output layers, Ren's
cross-attentions; and NeMo's neuron sets over the value layers."""

from __future__ import annotations

import re

from torch import nn

# Cross-attention value projection of a transformer block (diffusers naming).
VALUE_LAYER_SUFFIX = "attn2.to_v"
# Parts of the U-Net whose value layers NeMo looks at, in execution order (SPEC §1).
SEARCHED_BLOCKS = ("down_blocks", "mid_block")
# The U-Net's parts in the order a forward pass runs them (diffusers registers up before mid).
EXECUTION_ORDER = ("down_blocks", "mid_block", "up_blocks")

# One list of neuron indices per value layer, e.g. [[], [17], [], [], [3, 250], [], []].
# A list may name a neuron twice (the authors' initial selection does, see
# ``utils.methods.nemo.localization.candidate_set``); deactivation and every count treat it as a set.
NeuronSet = list[list[int]]


def _execution_key(name: str) -> tuple:
    block = name.split(".")[0]
    numbers = tuple(int(n) for n in re.findall(r"\.(\d+)(?=\.|$)", name))
    return (EXECUTION_ORDER.index(block),) + numbers


def modules_ending(unet: nn.Module, suffix: str, blocks: tuple[str, ...] = EXECUTION_ORDER) -> dict[str, nn.Module]:
    """Dotted name -> every module whose name ends with ``suffix`` in ``blocks``, in execution order."""
    found = {name: m for name, m in unet.named_modules() if name.endswith(suffix) and name.split(".")[0] in blocks}
    if not found:
        raise ValueError(f"the U-Net has no {suffix} layers in {blocks}")
    return {name: found[name] for name in sorted(found, key=_execution_key)}


def value_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """Dotted name -> ``attn2.to_v`` of the down and mid blocks, in execution order.

    SD v1.x: 7 layers of 320, 320, 640, 640, 1280, 1280, 1280 output features.
    """
    return modules_ending(unet, VALUE_LAYER_SUFFIX, SEARCHED_BLOCKS)


def layer_widths(layers: dict[str, nn.Linear]) -> list[int]:
    return [layer.out_features for layer in layers.values()]


def empty_set(num_layers: int) -> NeuronSet:
    return [[] for _ in range(num_layers)]


def distinct_neurons(neurons: NeuronSet) -> NeuronSet:
    """Each layer's neurons once, ascending: the set a neuron list deactivates."""
    return [sorted(set(layer)) for layer in neurons]


def count_neurons(neurons: NeuronSet) -> int:
    """Neurons deactivated by ``neurons`` (a neuron listed twice counts once)."""
    return sum(len(set(layer)) for layer in neurons)


def validate_neuron_set(neurons, widths: list[int] | None, source: str = "neuron list") -> NeuronSet:
    """``neurons`` as a list of per-layer int lists, or a ValueError naming ``source``.

    widths: each layer's width; None accepts any number of layers of any width (files read
    without the model).
    """
    count = len(neurons) if widths is None and isinstance(neurons, (list, tuple)) else len(widths or [])
    if not isinstance(neurons, (list, tuple)) or len(neurons) != count or not neurons:
        raise ValueError(f"{source}: expected a list of {count or 'per-layer'} lists of neuron indices, "
                         f"got {neurons!r:.80}")
    result = []
    for layer, (indices, width) in enumerate(zip(neurons, widths or [float("inf")] * count)):
        if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < width for i in indices):
            raise ValueError(f"{source}: layer {layer} must list ints in [0, {width}), got {indices!r:.80}")
        result.append(list(indices))
    return result
