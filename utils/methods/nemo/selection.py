"""Which neurons script 4 deactivates for each prompt (SPEC §5)."""

from __future__ import annotations

import random
from collections import Counter

from utils.layers import NeuronSet, distinct_neurons, empty_set


def neuron_frequencies(neuron_sets: list[NeuronSet]) -> Counter:
    """How often each (layer, neuron) is named over the prompts' lists, a neuron a list names
    twice counted twice (the authors' 4_generate_images.py counts each entry); keys ordered as
    the authors' ties are broken: layer by layer, within a layer by first appearance."""
    counts = Counter((l, n) for neurons in neuron_sets for l, layer in enumerate(neurons) for n in layer)
    return Counter({key: counts[key] for key in sorted(counts, key=lambda key: key[0])})


def _most_frequent(counts: Counter, keys) -> list:
    """``keys`` by count, most frequent first; ties keep the keys' order (a stable sort, as the authors')."""
    return sorted(keys, key=lambda key: -counts[key])


def top_k_per_layer(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """The k most frequent neurons of each layer (ties: the one named first)."""
    counts = neuron_frequencies(neuron_sets)
    layers = len(neuron_sets[0]) if neuron_sets else 0
    return [sorted(n for _, n in _most_frequent(counts, [key for key in counts if key[0] == layer])[:k])
            for layer in range(layers)]


def top_k_overall(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """The k most frequent neurons over all layers (ties: earlier layer, then the one named first)."""
    counts = neuron_frequencies(neuron_sets)
    result = empty_set(len(neuron_sets[0]))
    for layer, neuron in sorted(_most_frequent(counts, counts)[:k]):
        result[layer].append(neuron)
    return result


def top_k_sets(neuron_sets: list[NeuronSet], k: int) -> NeuronSet:
    """Union of the k most frequent whole neuron lists (a prompt's list, each layer sorted, is one;
    the empty list counts too, as in the authors' code; ties: the list named first)."""
    counts = Counter(tuple(tuple(sorted(layer)) for layer in neurons) for neurons in neuron_sets)
    result = empty_set(len(neuron_sets[0]))
    for neurons in _most_frequent(counts, counts)[:k]:
        for layer, indices in enumerate(neurons):
            result[layer] = sorted(set(result[layer]) | set(indices))
    return result


def random_like(neurons: NeuronSet, widths: list[int], rng: random.Random) -> NeuronSet:
    """As many random neurons per layer as ``neurons`` deactivates, drawn from the same layer."""
    return [sorted(rng.sample(range(width), len(layer))) for layer, width in zip(distinct_neurons(neurons), widths)]
