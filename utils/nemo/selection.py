"""Which neurons script 4 deactivates for each prompt (SPEC §5)."""

from __future__ import annotations

import random
from collections import Counter

from utils.layers import NeuronSet, distinct_neurons, empty_set

def neuron_frequencies(neuron_sets: list[NeuronSet]) -> Counter:
    """How many prompts deactivate each (layer, neuron)."""
    return Counter((l, n) for neurons in neuron_sets for l, layer in enumerate(distinct_neurons(neurons)) for n in layer)


def top_k_per_layer(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """The k most frequent neurons of each layer (ties: lower index first)."""
    counts = neuron_frequencies(neuron_sets)
    layers = len(neuron_sets[0]) if neuron_sets else 0
    return [sorted(sorted((n for (l, n) in counts if l == layer), key=lambda n: -counts[(layer, n)])[:k])
            for layer in range(layers)]


def top_k_overall(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """The k most frequent neurons over all layers (ties: earlier layer, lower index first)."""
    counts = neuron_frequencies(neuron_sets)
    chosen = sorted(counts, key=lambda key: (-counts[key], key))[:k]
    result = empty_set(len(neuron_sets[0]))
    for layer, neuron in sorted(chosen):
        result[layer].append(neuron)
    return result


def top_k_sets(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """Union of the k most frequent whole neuron sets (a prompt's refined set is one set)."""
    counts = Counter(tuple(map(tuple, distinct_neurons(neurons))) for neurons in neuron_sets if any(neurons))
    result = empty_set(len(neuron_sets[0]))
    for neurons, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]:
        for layer, indices in enumerate(neurons):
            result[layer] = sorted(set(result[layer]) | set(indices))
    return result


def random_like(neurons: NeuronSet, widths: list[int], rng: random.Random) -> NeuronSet:
    """As many random neurons per layer as ``neurons`` deactivates, drawn from the same layer."""
    return [sorted(rng.sample(range(width), len(layer))) for layer, width in zip(distinct_neurons(neurons), widths)]
