"""Text-only neuron activations and their hold-out statistics (SPEC §2, script 1)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from utils.diffusion import encode_prompts
from utils.methods.nemo import STATISTICS_BATCH_SIZE

logger = logging.getLogger(__name__)

@torch.no_grad()
def text_activations(layers: dict[str, nn.Linear], embeddings: torch.Tensor) -> list[torch.Tensor]:
    """Per layer the token-averaged |to_v(embedding)|: list of [n, features], float32.

    The value layers only read the text embedding, so this equals what they output
    inside any U-Net pass, averaged over the 77 tokens.
    """
    return [layer(embeddings).abs().mean(dim=1).float() for layer in layers.values()]


def prompt_activations(layers: dict[str, nn.Linear], embedding: torch.Tensor) -> list[torch.Tensor]:
    """``text_activations`` of one prompt's embedding [1, 77, dim]: per layer [features], on the CPU."""
    return [a[0].cpu() for a in text_activations(layers, embedding)]


@dataclass
class NeuronStatistics:
    """Per-layer mean and unbiased std of the activations over hold-out prompts."""

    means: list[torch.Tensor]  # per layer [features]
    stds: list[torch.Tensor]  # per layer [features]
    layer_names: list[str] | None = None  # None for the authors' (means, stds) files
    model: str | None = None
    num_prompts: int | None = None
    extra: dict = field(default_factory=dict)

    def z_scores(self, activations: list[torch.Tensor]) -> list[torch.Tensor]:
        """(a - mean) / std per layer; ``activations`` per layer [..., features]."""
        return [(a.cpu() - m) / s for a, m, s in zip(activations, self.means, self.stds)]


@dataclass
class ActivationSums:
    """Running float64 sums of activations and of their squares, per layer [features]."""

    count: int
    sums: list[torch.Tensor]
    squares: list[torch.Tensor]

    def __add__(self, other: "ActivationSums") -> "ActivationSums":
        return ActivationSums(self.count + other.count, [a + b for a, b in zip(self.sums, other.sums)],
                              [a + b for a, b in zip(self.squares, other.squares)])

    def statistics(self, layer_names: list[str], model: str) -> NeuronStatistics:
        """Mean and unbiased std per neuron."""
        n = self.count
        if n < 2:
            raise ValueError(f"statistics need at least 2 prompts, got {n}")
        means = [s / n for s in self.sums]
        stds = [((q - n * m * m) / (n - 1)).clamp_min(0).sqrt() for q, m in zip(self.squares, means)]
        return NeuronStatistics([m.float() for m in means], [s.float() for s in stds], layer_names, model, n)


@torch.no_grad()
def activation_sums(pipe, layers: dict[str, nn.Linear], prompts: list[str],
                    batch_size: int = STATISTICS_BATCH_SIZE) -> ActivationSums:
    """Sums over ``prompts`` of the text-only activations, without a U-Net pass."""
    total = ActivationSums(0, [torch.zeros(l.out_features, dtype=torch.float64) for l in layers.values()],
                           [torch.zeros(l.out_features, dtype=torch.float64) for l in layers.values()])
    for start in tqdm(range(0, len(prompts), batch_size), desc="statistics", unit="batch"):
        embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts[start:start + batch_size])
        acts = [a.double().cpu() for a in text_activations(layers, embeddings)]  # per layer [batch, features]
        total = total + ActivationSums(len(acts[0]), [a.sum(0) for a in acts], [(a * a).sum(0) for a in acts])
    return total


def compute_statistics(pipe, layers: dict[str, nn.Linear], prompts: list[str], model: str,
                       batch_size: int = STATISTICS_BATCH_SIZE) -> NeuronStatistics:
    """Mean and std per neuron over ``prompts`` (SPEC §2)."""
    return activation_sums(pipe, layers, prompts, batch_size).statistics(list(layers), model)


def save_statistics(stats: NeuronStatistics, path: str) -> None:
    """Written atomically (``utils.outputs.save_torch``)."""
    from utils.outputs import save_torch

    save_torch(path, dict(means=stats.means, stds=stats.stds, layer_names=stats.layer_names,
                    model=stats.model, num_prompts=stats.num_prompts))


def load_statistics(path: str, layers: dict[str, nn.Linear]) -> NeuronStatistics:
    """Read our file or the authors' ``(means, stds)`` pair and check it against ``layers``."""
    if not os.path.isfile(path):
        raise ValueError(f"statistics file {path} not found; compute it with 1_compute_activations_statistics.py")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # empty, cut off, or another kind of file: torch, pickle and zip errors alike
        raise ValueError(f"statistics file {path} cannot be read as a torch file ({type(error).__name__}); "
                         "expected script 1's output or the authors' (means, stds) .pt") from None
    if isinstance(data, dict) and {"means", "stds"} <= data.keys():
        stats = NeuronStatistics(list(data["means"]), list(data["stds"]), data.get("layer_names"),
                                 data.get("model"), data.get("num_prompts"))
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        stats = NeuronStatistics(list(data[0]), list(data[1]))
    else:
        raise ValueError(f"{path}: expected (means, stds) or a dict with 'means' and 'stds'")
    if not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in [*stats.means, *stats.stds]):
        raise ValueError(f"{path}: means and stds must be lists of 1-D tensors, one per value layer")
    widths = [layer.out_features for layer in layers.values()]
    got = [len(m) for m in stats.means]
    if got != widths or [len(s) for s in stats.stds] != widths:
        raise ValueError(f"{path}: statistics of {len(got)} layers with widths {got} do not match the model's "
                         f"{len(widths)} value layers with widths {widths}")
    if stats.layer_names is not None and list(stats.layer_names) != list(layers):
        raise ValueError(f"{path}: statistics were computed for layers {stats.layer_names}, the model has {list(layers)}")
    stats.means = [m.float() for m in stats.means]
    stats.stds = [s.float() for s in stats.stds]
    return stats
