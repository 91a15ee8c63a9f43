"""The one place where hooks are registered: recording and editing module outputs (the methods
use it to switch neurons off or scale attention keys) and the arguments modules are called with."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

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


@contextmanager
def count_samples(module: nn.Module) -> Iterator[Counter]:
    """Samples through ``module`` while the context is open: ``forwards`` adds the batch of its
    first input at every call, ``backwards`` the batch of its output at every gradient that
    reaches it (an output that needs no gradient counts none)."""
    counts: Counter = Counter()

    def before(_module, args, kwargs):
        counts["forwards"] += len(args[0] if args else kwargs["sample"])

    def after(_module, _args, _kwargs, output):
        tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.register_hook(lambda grad: counts.update(backwards=len(grad)))

    handles = [module.register_forward_pre_hook(before, with_kwargs=True),
               module.register_forward_hook(after, with_kwargs=True)]
    try:
        yield counts
    finally:
        for handle in reversed(handles):
            handle.remove()
