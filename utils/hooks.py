"""The one place where hooks are registered: recording and editing module outputs (deactivating
neurons, scaling attention keys) and the arguments modules are called with."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from utils.layers import NeuronSet

# edit(output [batch, tokens, features], module_name) -> new output, or None to keep it.
Edit = Callable[[torch.Tensor, str], "torch.Tensor | None"]
# edit_call(args, kwargs, module_name) -> (args, kwargs) the module is called with.
EditCall = Callable[[tuple, dict, str], "tuple[tuple, dict]"]


@contextmanager
def _registered(modules: dict[str, nn.Module], register: Callable[[str, nn.Module], object]) -> Iterator[None]:
    """``register(name, module)`` returns a hook handle; every handle is removed in reverse
    order on exit, also when the body raises."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(register(name, module))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def edit_outputs(modules: dict[str, nn.Module], edit: Edit):
    """Apply ``edit`` to the output of every module in ``modules`` while the context is open."""
    return _registered(modules, lambda name, module: module.register_forward_hook(
        lambda _m, _i, out: edit(out, name)))


def edit_calls(modules: dict[str, nn.Module], edit: EditCall):
    """Replace the arguments every module in ``modules`` is called with while the context is open."""
    return _registered(modules, lambda name, module: module.register_forward_pre_hook(
        lambda _m, args, kwargs: edit(args, kwargs, name), with_kwargs=True))


@contextmanager
def record_outputs(layers: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect every output of each layer (detached), keyed by layer name, in call order."""
    records: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(output: torch.Tensor, name: str) -> None:
        records[name].append(output.detach())

    with edit_outputs(layers, keep):
        yield records


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
