"""Script 4's global neuron selections against a reference written the way the authors'
4_generate_images.py computes them (dicts counted entry by entry, then a stable sort)."""

import random

import pytest

from utils.methods.nemo import selection


def authors_counts(rows):
    counts = {i: {} for i in range(len(rows[0]))}
    for row in rows:
        for layer_idx, layer in enumerate(row):
            for neuron in layer:
                counts[layer_idx][neuron] = counts[layer_idx].get(neuron, 0) + 1
    return counts


def authors_top_k_per_layer(rows, k):
    counts = authors_counts(rows)
    ranked = {l: sorted(counts[l].items(), key=lambda x: x[1], reverse=True) for l in counts}
    return [[n for n, _ in ranked[l][:k]] for l in ranked]


def authors_top_k_overall(rows, k):
    counts = authors_counts(rows)
    overall = {}
    for l in counts:
        for n, c in counts[l].items():
            overall[(l, n)] = c
    overall = sorted(overall.items(), key=lambda x: x[1], reverse=True)
    chosen = [[] for _ in rows[0]]
    for (l, n), _ in overall[:k]:
        chosen[l].append(n)
    return chosen


def authors_top_k_subgroups(rows, k):
    groups = {}
    for row in rows:
        key = str([sorted(layer) for layer in row])
        groups[key] = groups.get(key, 0) + 1
    chosen = [[] for _ in rows[0]]
    for key, _ in sorted(groups.items(), key=lambda x: x[1], reverse=True)[:k]:
        for l, layer in enumerate(eval(key)):
            chosen[l] += [n for n in layer if n not in chosen[l]]
    return chosen


def random_rows(seed: int) -> list:
    """Refined lists with many ties, repeated lists, duplicates within a list and empty lists."""
    rng = random.Random(seed)
    pool = [[[rng.randrange(6) for _ in range(rng.randrange(3))] for _ in range(7)] for _ in range(4)]
    return [rng.choice(pool) if rng.random() < 0.4 else
            [[rng.randrange(6) for _ in range(rng.randrange(4))] for _ in range(7)] for _ in range(12)]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_global_selections_match_the_authors(seed, k):
    rows = random_rows(seed)
    as_sets = lambda chosen: [sorted(set(layer)) for layer in chosen]
    assert selection.top_k_per_layer(rows, k) == as_sets(authors_top_k_per_layer(rows, k))
    assert selection.top_k_overall(rows, k) == as_sets(authors_top_k_overall(rows, k))
    assert selection.top_k_sets(rows, k) == as_sets(authors_top_k_subgroups(rows, k))


def test_ties_go_to_the_neuron_named_first_not_the_lowest_index():
    rows = [[[9], [4]], [[2], [4]]]  # 9 and 2 tie in layer 0; 9 is named first
    assert selection.top_k_per_layer(rows, 1) == [[9], [4]]
    assert selection.top_k_overall(rows, 2) == [[9], [4]]  # (1, 4) twice, then the first of the tie
