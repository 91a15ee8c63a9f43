import copy
import random
import zlib

import pytest
import torch

from utils.methods.nemo.localization import SelectionSchedule, candidate_set, greedy_removal, initial_selection, refine

TAU = 0.428


class ScriptedScore:
    """A blocked score given by a function of the neuron set; logs every set it scores."""

    def __init__(self, fn):
        self.fn, self.seen, self.calls = fn, [], 0

    def __call__(self, sets, bound=None):
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


# ---------------------------------------------------------------------------------------
# Early decisions: a probe's MS-SSIM bounds the full batch's from below.

from utils.methods.nemo.localization import (BlockedScorer, LocalizationConfig, localize_prompt,  # noqa: E402
                                             probe_scores, set_key)
from utils.methods.nemo.noise import normalize_maps  # noqa: E402
from utils.methods.nemo.score import ms_ssim  # noqa: E402

KERNEL = 5


def noise_like(g, n, side=24):
    """Smooth random maps like noise differences: [n, 4, side, side], min-max normalized."""
    coarse = torch.rand(n, 4, side // 4, side // 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return normalize_maps(smooth + 0.3 * torch.rand(n, 4, side, side, generator=g))


def blocked_like(g, unblocked):
    """Blocked maps at random distances from the unblocked ones, so scores span (0, 1)."""
    mix = torch.rand(len(unblocked), 1, 1, 1, generator=g)
    return normalize_maps((1 - mix) * unblocked + mix * noise_like(g, len(unblocked), unblocked.shape[-1]))


@pytest.mark.parametrize("case", range(20))
def test_a_seeds_ms_ssim_in_a_sub_batch_is_at_most_its_ms_ssim_in_the_full_batch(case):
    # torchmetrics takes each scale's data range R from the batch; a sub-batch's R is at most
    # the full batch's, and c1 = (0.01 R)^2, c2 = (0.03 R)^2 only raise the terms
    # (a + c) / (b + c) with a <= b. Checked here with no margin on whole random batches.
    g = torch.Generator().manual_seed(case)
    unblocked = noise_like(g, 10)
    blocked = blocked_like(g, unblocked)
    full = ms_ssim(unblocked, blocked, KERNEL)
    for _ in range(10):
        subset = torch.randperm(10, generator=g)[: int(torch.randint(1, 10, (1,), generator=g))]
        part = ms_ssim(unblocked[subset], blocked[subset], KERNEL)
        assert (part <= full[subset]).all(), (part - full[subset]).max()


@pytest.mark.parametrize("case", range(20))
def test_a_probes_score_lies_between_its_pairs_alone_and_the_full_batch(case):
    # The probe's batch spans every unblocked map: its data range is at least the probed
    # pairs' own and at most the full batch's, at every scale. No margin.
    g = torch.Generator().manual_seed(case)
    unblocked = noise_like(g, 10)
    blocked = blocked_like(g, unblocked)
    full = ms_ssim(unblocked, blocked, KERNEL)
    for _ in range(10):
        seeds = torch.randperm(10, generator=g)[: int(torch.randint(1, 5, (1,), generator=g))].tolist()
        probe = probe_scores(unblocked, blocked[seeds], seeds, KERNEL)
        alone = ms_ssim(unblocked[seeds], blocked[seeds], KERNEL)
        assert (alone <= probe).all() and (probe <= full[seeds]).all(), (probe - full[seeds]).max()


class FakeNoise:
    """Blocked noise differences as a pure function of (seed, set): no batch effects.

    Latents carry their seed in element [0, 0, 0]; the unblocked maps are ``unblocked``.
    """

    def __init__(self, unblocked, salt):
        self.unblocked, self.salt, self.sample_forwards, self.maps = unblocked, salt, 0, {}

    def blocked(self, seed, neurons):
        key = (seed, set_key(neurons))
        if key not in self.maps:
            g = torch.Generator().manual_seed(zlib.crc32(repr((self.salt, key)).encode()))
            self.maps[key] = blocked_like(g, self.unblocked[seed:seed + 1])[0]
        return self.maps[key]

    def __call__(self, latents, sets, solo=False):
        self.sample_forwards += len(latents) * len(sets)
        seeds = latents[:, 0, 0, 0].long().tolist()
        return torch.stack([torch.stack([self.blocked(seed, s) for seed in seeds]) for s in sets])  # [sets, n, 4, h, w]


def fake_scorers(case, n=10, **settings):
    g = torch.Generator().manual_seed(case)
    unblocked = noise_like(g, n)
    latents = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 4, 24, 24)
    priority = torch.rand(n, generator=g)
    make = lambda early: BlockedScorer(FakeNoise(unblocked, case), latents, unblocked, KERNEL,
                                       LocalizationConfig(early_decisions=early, **settings), priority)
    return make(True), make(False)


@pytest.mark.parametrize("case", range(2))
@pytest.mark.parametrize("seeds_per_call,batch", [(1, 0), (3, 0), (2, 4)])
def test_early_decisions_decide_as_the_full_batch_also_within_1e_6_of_the_bound(case, seeds_per_call, batch):
    early, full = fake_scorers(case, seeds_per_call=seeds_per_call, batch_candidates=batch)
    sets = [[[case, i], [i % 3]] for i in range(3)]
    exact = full(sets)
    first = int(torch.argmax(early.priority))  # the seed an early test forwards first
    per_seed = [probe_scores(full.unblocked, full.noise.blocked(first, s)[None], [first], KERNEL).item() for s in sets]
    # bounds at, just below and just above each full score and each first seed's own score
    for anchor in exact + per_seed:
        for bound in (anchor, anchor - 1e-6, anchor + 1e-6, anchor - 1e-7, anchor + 1e-7, anchor - 0.05):
            got = early(sets, bound)
            for score, expected in zip(got, exact):
                assert (score > bound) == (expected > bound) and (score >= bound) == (expected >= bound)
                assert score <= expected + 1e-7  # a partial score never exceeds the full one
                if not score >= bound:  # accepted: the full computation's own number
                    assert score == expected
    assert early.seeds_skipped > 0  # some tests were rejected before their last seed


def test_early_scorer_puts_the_seed_that_rejected_first():
    early, _ = fake_scorers(3, seeds_per_call=1)
    early([[[1], [2]]], -1.0)  # rejected by its first seed
    first = int(torch.argmax(early.priority))
    forwards = early.noise.sample_forwards
    early([[[1], [2]]], -1.0)
    assert early.noise.sample_forwards == forwards + 1 and int(torch.argmax(early.priority)) == first


def test_a_probe_rejects_where_the_probed_pair_alone_would_not():
    # the one-seed probe scored within all unblocked maps' data range decides a test that the
    # probed pair's own data range leaves open (a lower score), for one forward
    margin = LocalizationConfig().decision_margin
    for case in range(50):
        early, full = fake_scorers(case, seeds_per_call=1)
        neurons = [[case], [1]]
        first = int(torch.argmax(early.priority))
        blocked = full.noise.blocked(first, neurons)[None]
        probe = probe_scores(full.unblocked, blocked, [first], KERNEL).item()
        alone = ms_ssim(full.unblocked[first:first + 1], blocked, KERNEL).item()
        if probe - alone > 1e-4:
            bound = (probe + alone) / 2 - margin  # the probe passes bound + margin, the pair alone does not
            assert early([neurons], bound)[0] == probe and early.noise.sample_forwards == 1
            assert full([neurons], bound)[0] >= bound
            return
    pytest.fail("no case where the probe's data range lifts its score")


def test_the_seed_over_the_bound_in_a_full_computation_goes_first():
    for case in range(50):
        early, full = fake_scorers(case, seeds_per_call=1)
        neurons = [[case], [2]]
        per_seed = ms_ssim(full.unblocked, full.noise(full.latents, [neurons])[0], KERNEL)
        first, top = int(torch.argmax(early.priority)), int(torch.argmax(per_seed))
        if top != first and per_seed[top] - per_seed[first] > 0.01:
            bound = (per_seed[top].item() + per_seed[first].item()) / 2
            early([neurons], bound)  # the probe of ``first`` does not decide; the full call rejects
            assert int(torch.argmax(early.priority)) == top
            forwards = early.noise.sample_forwards
            assert early([neurons], bound)[0] >= bound and early.noise.sample_forwards == forwards + 1
            return
    pytest.fail("no case where another seed than the first is over the bound")


def tiny_walk_inputs(tiny_pipe, prompt, seed):
    from utils.diffusion import latent_shape
    from utils.layers import value_layers
    from utils.methods.nemo.noise import prompt_noise_difference
    from utils.methods.nemo.statistics import prompt_activations

    layers = value_layers(tiny_pipe.unet)
    noise = prompt_noise_difference(tiny_pipe, layers, prompt)
    activations = prompt_activations(layers, noise.text_embedding)
    g = torch.Generator().manual_seed(seed)
    z_scores = [torch.randn(a.numel(), generator=g) * 2.5 for a in activations]
    return noise, latent_shape(tiny_pipe.unet), z_scores, activations


def tiny_walk(tiny_pipe, prompt: int, early: bool, batch: int):
    """NeMo on the tiny model for one prompt, with tau and random z-scores chosen by ``prompt``."""
    noise, shape, z, a = tiny_walk_inputs(tiny_pipe, f"prompt number {prompt}", prompt)
    tau = (0.25, 0.5, 0.75, 0.9)[prompt]
    settings = LocalizationConfig(samples_per_prompt=4, pairwise_ssim_threshold=-1.0,
                                    ssim_threshold_initial_selection=tau, ssim_threshold_refinement=tau,
                                    schedule=SelectionSchedule(initial_theta=2.0), early_decisions=early,
                                    batch_candidates=batch)
    return localize_prompt(noise, shape, z, a, settings, KERNEL)


@pytest.mark.parametrize("prompt", range(4))
def test_early_decisions_write_the_full_computations_rows_on_a_tiny_model(tiny_pipe, prompt):
    rows = {}
    for early in (False, True):
        for batch in (0, 3):
            r = tiny_walk(tiny_pipe, prompt, early, batch)
            rows[early, batch] = (r.initial_neurons, r.initial_score, r.refined_neurons, r.refined_score)
    assert rows[True, 0] == rows[False, 0] == rows[True, 3]
    assert rows[False, 3][0::2] == rows[False, 0][0::2]  # batched full: same lists, scores up to float noise


@pytest.mark.parametrize("batch", [0, 3])
def test_early_decisions_make_no_more_forwards_than_the_full_walk(tiny_pipe, batch):
    early, full = (tiny_walk(tiny_pipe, 0, early, batch).unet_sample_forwards for early in (True, False))
    assert early <= full


def test_prompts_side_by_side_decide_and_write_as_the_sequential_walk(tiny_pipe):
    from utils.methods.nemo.localization import localize_prompts

    inputs = [tiny_walk_inputs(tiny_pipe, f"side by side {i}", 10 + i) for i in range(3)]
    settings = LocalizationConfig(samples_per_prompt=3, pairwise_ssim_threshold=-1.0,
                                    ssim_threshold_initial_selection=0.5, ssim_threshold_refinement=0.5,
                                    schedule=SelectionSchedule(initial_theta=2.0))
    row = lambda r: (r.initial_neurons, r.initial_score, r.refined_neurons, r.refined_score, r.seeds_skipped)
    sequential = [row(localize_prompt(noise, shape, z, a, settings, KERNEL)) for noise, shape, z, a in inputs]
    side_by_side = localize_prompts([i[0] for i in inputs], inputs[0][1], [i[2] for i in inputs],
                                    [i[3] for i in inputs], settings, KERNEL)
    assert [row(r) for r in side_by_side] == sequential
