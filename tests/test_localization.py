import copy
import random
import zlib

import pytest
import torch

from utils.nemo.localization import (SelectionSchedule, candidate_set, greedy_removal, initial_selection, refine)

TAU = 0.428


class ScriptedScore:
    """A blocked score given by a function of the neuron set; logs every set it scores."""

    def __init__(self, fn):
        self.fn, self.seen, self.calls = fn, [], 0

    def __call__(self, sets):
        self.calls += 1
        self.seen += [[list(layer) for layer in s] for s in sets]
        return [self.fn(s) for s in sets]


def as_pairs(neurons):
    return {(l, n) for l, layer in enumerate(neurons) for n in layer}


def test_default_schedule_is_theta_5_to_1_25_with_k_0_to_15():
    steps = SelectionSchedule().steps(max_k=1280)
    assert steps == [(5 - 0.25 * i, i) for i in range(16)]


def test_schedule_variants():
    assert SelectionSchedule(use_top_k=False).steps(1280) == [(5 - 0.25 * i, 0) for i in range(16)]
    no_theta = SelectionSchedule(use_theta=False).steps(40)
    assert no_theta[0][0] == float("inf") and [k for _, k in no_theta] == list(range(40))
    with pytest.raises(ValueError, match="no_theta and --no_top_k"):
        SelectionSchedule(use_theta=False, use_top_k=False).steps(10)


def test_candidate_set_lists_z_outliers_then_top_k_activations_with_duplicates():
    z = [torch.tensor([0.0, 6.0, -5.5, 1.0, 4.0]), torch.tensor([0.0, 0.0, 0.0])]
    a = [torch.tensor([9.0, 1.0, 1.0, 8.0, 7.0]), torch.tensor([1.0, 3.0, 2.0])]
    assert candidate_set(z, a, 5.0, 0) == [[1, 2], []]
    assert candidate_set(z, a, 5.0, 2) == [[1, 2, 0, 3], [1, 2]]
    assert candidate_set(z, a, 3.5, 1) == [[1, 2, 4, 0], [1]]
    # as the authors' initial_neuron_selection: a neuron in both parts is listed twice
    assert candidate_set(z, a, 3.5, 3) == [[1, 2, 4, 0, 3, 4], [1, 2, 0]]


def make_activations(seed=0, widths=(8, 8, 16, 16, 16, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(w, generator=g) * 2 for w in widths]
    a = [torch.rand(w, generator=g) for w in widths]
    return z, a


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_initial_selection_stops_at_the_first_step_at_or_below_threshold(batch):
    z, a = make_activations()
    # the score falls as more neurons are blocked; equals the threshold exactly at 12
    score = ScriptedScore(lambda s: TAU if sum(map(len, s)) >= 12 else 0.9)
    result = initial_selection(z, a, score, TAU, SelectionSchedule(), batch)
    steps = SelectionSchedule().steps(16)
    first = next(i for i, (t, k) in enumerate(steps) if sum(map(len, candidate_set(z, a, t, k))) >= 12)
    assert result.found and (result.theta, result.k) == steps[first] and result.steps == first + 1
    assert result.neurons == candidate_set(z, a, *steps[first]) and result.score == TAU
    assert score.seen[: first + 1] == [candidate_set(z, a, t, k) for t, k in steps[: first + 1]]


def test_initial_selection_gives_up_with_the_last_set_and_its_score():
    z, a = make_activations()
    result = initial_selection(z, a, ScriptedScore(lambda s: 0.95 - 0.001 * sum(map(len, s))), TAU)
    assert not result.found and (result.theta, result.k) == (1.25, 15) and result.steps == 16
    assert result.neurons == candidate_set(z, a, 1.25, 15)
    assert result.score == pytest.approx(0.95 - 0.001 * sum(map(len, result.neurons)))


def test_refinement_keeps_exactly_the_memorization_neurons():
    initial = [[0, 1], [], [4, 2], [3], [], [7, 8, 9], [5, 6]]
    key = {(2, 2), (6, 6)}  # memorization needs both blocked
    score = ScriptedScore(lambda s: 0.1 if key <= as_pairs(s) else 0.8)
    refined, refined_score = refine(initial, 0.1, score, TAU)
    assert refined == [[], [], [2], [], [], [], [6]] and refined_score == 0.1


def test_refinement_order_layers_last_to_first_then_neurons():
    initial = [[0], [], [4, 2], [], [], [], [5, 6]]
    score = ScriptedScore(lambda s: 0.9)  # nothing can be removed
    refine(initial, 0.1, score, TAU)
    assert score.seen == [
        [[0], [], [4, 2], [], [], [], []],  # layer 6 re-activated
        [[0], [], [], [], [], [], [5, 6]],  # layer 2
        [[], [], [4, 2], [], [], [], [5, 6]],  # layer 0
        [[0], [], [4, 2], [], [], [], [6]],  # neurons of layer 6, in list order
        [[0], [], [4, 2], [], [], [], [5]],
        [[0], [], [2], [], [], [], [5, 6]],  # layer 2: 4 before 2
        [[0], [], [4], [], [], [], [5, 6]],
        [[], [], [4, 2], [], [], [], [5, 6]],
    ]


def test_refinement_drops_on_strictly_below_only():
    initial = [[1], [], [], [], [], [], [2]]
    refined, _ = refine(initial, 0.1, ScriptedScore(lambda s: TAU), TAU)
    assert refined == initial


def hashed_score(salt):
    """A deterministic pseudo-random score per set: below TAU for ~70% of sets."""
    def fn(s):
        h = zlib.crc32(repr((salt, s)).encode()) / 2**32
        return 0.2 if h < 0.7 else 0.6
    return fn


@pytest.mark.parametrize("case", range(30))
def test_batched_walks_decide_exactly_as_the_sequential_walk(case):
    rng = random.Random(case)
    initial = [sorted(rng.sample(range(40), rng.randint(0, 6))) for _ in range(7)]
    fn = hashed_score(case)
    sequential = ScriptedScore(fn)
    expected = refine(initial, 0.2, sequential, TAU, batch=1)
    for batch in (2, 3, 5, 8, 64):
        batched = ScriptedScore(fn)
        assert refine(initial, 0.2, batched, TAU, batch=batch) == expected
        assert batched.calls <= sequential.calls
    z, a = make_activations(case)
    select = lambda b: initial_selection(z, a, ScriptedScore(hashed_score(case + 100)), TAU, SelectionSchedule(), b)
    assert select(1) == select(7)


def test_speculation_resumes_after_the_first_rejected_removal():
    removals = [(0, 1), (0, 2), (0, 3), (0, 4)]
    # removing neuron 2 breaks it; all others may go
    score = ScriptedScore(lambda s: 0.1 if 2 in s[0] else 0.9)
    kept, last = greedy_removal([[1, 2, 3, 4]], 0.1, removals, score, TAU, batch=4)
    assert kept == [[2]] and last == 0.1
    assert score.seen[:4] == [[[2, 3, 4]], [[3, 4]], [[4]], [[]]]
    assert score.seen[4:] == [[[2, 4]], [[2]]]


def authors_refinement(initial, score_of_set, threshold):
    """The authors' ``neuron_refinement`` (utils/activation_detection.py) restated on a
    scripted score: lists with duplicates, ``list.remove`` (first occurrence), a fresh
    score of every tested list, strict ``<``. ``score_of_set`` sees the list as deactivation
    does, as a set. Returns the refined list and how many of its tests changed the set
    (the ones that need a U-Net call)."""
    blocking = copy.deepcopy(initial)
    changed = 0

    def score(lists):
        nonlocal changed
        changed += any(set(a) != set(b) for a, b in zip(lists, blocking))
        return score_of_set([sorted(set(layer)) for layer in lists])

    for layer in reversed(range(len(blocking))):
        if blocking[layer]:
            current = copy.deepcopy(blocking)
            current[layer] = []
            if score(current) < threshold:
                blocking[layer] = []
    for layer in reversed(range(len(blocking))):
        if not blocking[layer]:
            continue
        for neuron in copy.deepcopy(blocking[layer]):
            current = copy.deepcopy(blocking)
            current[layer].remove(neuron)
            if score(current) < threshold:
                blocking[layer].remove(neuron)
    return blocking, changed


def set_score(salt, accept=0.7):
    """A deterministic pseudo-random score of a neuron *set*: below TAU for ``accept`` of sets."""
    def fn(s):
        key = [sorted(set(layer)) for layer in s]
        if not any(key):
            return 1.0  # the unblocked model
        h = zlib.crc32(repr((salt, key)).encode()) / 2**32
        return 0.2 if h < accept else 0.6
    return fn


def initial_with_duplicates(rng):
    """A candidate list as the authors build it: z-outliers ascending, then top-k (largest
    first), overlapping often."""
    layers = []
    for _ in range(7):
        outliers = sorted(rng.sample(range(12), rng.randint(0, 4)))
        top_k = rng.sample(range(12), rng.randint(0, 4))
        layers.append(outliers + top_k)
    return layers


@pytest.mark.parametrize("case", range(200))
def test_refinement_is_the_authors_walk_on_lists_with_duplicates(case):
    rng = random.Random(1000 + case)
    initial = initial_with_duplicates(rng)
    fn = set_score(case, accept=rng.choice([0.3, 0.7, 0.9]))
    # the walk starts from the initial score: below tau (selection found), or equal to the
    # threshold (selection gave up and refines against its own last score)
    gave_up = case % 3 == 0
    initial_score = fn(initial)
    threshold = initial_score if gave_up else TAU
    expected, changed = authors_refinement(initial, fn, threshold)
    for batch in (1, 4, 8):
        scorer = ScriptedScore(fn)
        refined, refined_score = refine(initial, initial_score, scorer, threshold, batch)
        assert refined == expected, (batch, initial)
        assert refined_score == fn(refined)
        if batch == 1:  # only the tests that change the set are scored
            assert len(scorer.seen) == changed


def test_a_duplicated_neuron_is_tested_at_its_last_occurrence():
    # layer 6 lists 5 (z-outlier) then 7, 5 (top-k); only blocking 5 keeps memorization away
    initial = [[], [], [], [], [], [], [5, 7, 5]]
    score = ScriptedScore(lambda s: 0.1 if 5 in s[6] else 0.9)
    refined, refined_score = refine(initial, 0.1, score, TAU)
    # occurrence 1 of 5: a no-op, dropped on the current score 0.1 without a U-Net call;
    # 7: really tested and dropped; last occurrence of 5: really tested, kept
    empty = [[], [], [], [], [], [], []]
    assert score.seen == [empty, empty[:6] + [[5]], empty]  # layer pass, then 7, then the last 5
    assert refined == [[], [], [], [], [], [], [5]] and refined_score == 0.1


def test_a_walk_that_starts_at_the_threshold_never_tests_a_duplicated_neuron():
    # the initial selection gave up: the threshold is its own score, so every no-op is rejected
    initial = [[], [], [], [], [], [], [3, 3, 4]]
    score = ScriptedScore(lambda s: 0.3 if set(s[6]) == {3} else 0.5)
    refined, refined_score = refine(initial, 0.5, score, 0.5)
    # layer pass: empty set (score 1, rejected); neurons: 3 (no-op, 0.5 not < 0.5), 3 (no-op
    # again: the first removal was not kept), 4 (real: {3} scores 0.3, dropped)
    assert score.seen == [[[], [], [], [], [], [], []], [[], [], [], [], [], [], [3, 3]]]
    assert refined == [[], [], [], [], [], [], [3, 3]] and refined_score == 0.3


def test_initial_selection_stopped_by_its_limit_refines_against_its_score():
    z, a = make_activations()
    # found at the first step, which is already at the authors' limit (theta == 1)
    result = initial_selection(z, a, ScriptedScore(lambda s: 0.1), TAU, SelectionSchedule(initial_theta=1.0))
    assert result.found and result.refine_against_score
    result = initial_selection(z, a, ScriptedScore(lambda s: 0.1), TAU)
    assert result.found and not result.refine_against_score
