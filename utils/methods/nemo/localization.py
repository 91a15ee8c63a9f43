"""NeMo's per-prompt localization (SPEC §4): initial selection, then refinement.

The search functions take a ``score_sets`` callable ((list of neuron sets, reject bound) ->
list of blocked scores), so they run on a real U-Net or on a scripted score in tests. A
score above the bound may be a lower bound (an early decision, see ``BlockedScorer``): the
walks only compare it with the bound. Every walk evaluates up to ``batch`` candidate sets
per call and keeps the sequential algorithm's decisions exactly (speculation on cumulative
removals, see ``greedy_removal``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from utils.diffusion import initial_latents
from utils.layers import NeuronSet, count_neurons, empty_set
from utils.methods.nemo import (BATCH_CANDIDATES, DECISION_MARGIN, DETECTION_SEED, INITIAL_K, INITIAL_THETA,
                                MEMORIZATION_THRESHOLD, MIN_THETA, PROBE_SHARE_RATE, SAMPLES_PER_PROMPT,
                                SEEDS_PER_CALL_CPU, THETA_REDUCTION_PER_STEP)
from utils.methods.nemo.noise import NoiseDifference, UNetCounter, merged_noise_differences
from utils.methods.nemo.score import ms_ssim, pairwise_max_scores

logger = logging.getLogger(__name__)

# score_sets(sets, bound) -> per set its blocked score, or a value above ``bound`` that is
# at most the score (the set is rejected whatever the rest of its seeds give)
ScoreSets = Callable[[list[NeuronSet], float], list[float]]

@dataclass(frozen=True)
class SelectionSchedule:
    """The (theta, k) steps of the initial selection (authors' script 3)."""

    initial_theta: float = INITIAL_THETA
    theta_reduction_per_step: float = THETA_REDUCTION_PER_STEP
    min_theta: float = MIN_THETA
    initial_k: int = INITIAL_K
    use_theta: bool = True
    use_top_k: bool = True

    def steps(self, max_k: int) -> list[tuple[float, int]]:
        """Every (theta, k) the authors' loop evaluates before it gives up.

        After a failed step theta drops by the reduction (while above min_theta) and k
        grows by 1; the loop stops, without evaluating, once theta reaches exactly 1
        or k reaches ``max_k`` (the widest layer; 1280 hard-coded by the authors).
        """
        if not (self.use_theta or self.use_top_k):
            raise ValueError("--no_theta and --no_top_k together leave no way to select neurons")
        theta = self.initial_theta if self.use_theta else math.inf
        k = self.initial_k if self.use_top_k else 0
        steps = []
        while True:
            steps.append((theta, k))
            if theta > self.min_theta and self.use_theta:
                theta -= self.theta_reduction_per_step
            if self.use_top_k:
                k += 1
            if self.at_limit(theta, k, max_k) or len(steps) > 10 * max_k:
                return steps

    def at_limit(self, theta: float, k: int, max_k: int) -> bool:
        """The authors' loop stops after a step once theta is exactly 1 or k reaches ``max_k``."""
        return theta == 1 or k >= max_k


def candidate_set(z_scores: list[torch.Tensor], activations: list[torch.Tensor], theta: float, k: int) -> NeuronSet:
    """Per layer, as the authors' ``initial_neuron_selection`` lists them: the neurons with
    |z| > theta (ascending), then the k largest |a| (largest first). A neuron in both parts
    is listed twice; the refinement walk depends on it (see ``refine``).

    z_scores, activations: per layer [features].
    """
    neurons = []
    for z, a in zip(z_scores, activations):
        chosen = torch.nonzero(z.abs() > theta).flatten().tolist()
        if k > 0:
            chosen += torch.topk(a.abs(), min(k, a.numel())).indices.tolist()
        neurons.append(chosen)
    return neurons


@dataclass
class InitialSelection:
    neurons: NeuronSet
    score: float
    found: bool  # False when the schedule ran out with every score above the threshold
    theta: float
    k: int
    steps: int  # (theta, k) steps tried, this one included
    refine_against_score: bool = False  # the authors' loop stopped on its theta/k limit here


def initial_selection(z_scores, activations, score_sets: ScoreSets, threshold: float,
                      schedule: SelectionSchedule = SelectionSchedule(), batch: int = 1) -> InitialSelection:
    """SPEC §4.1: the first (theta, k) step whose blocked score is <= threshold.

    If none is, the last step's set. Either way, when the authors' loop stops on its
    theta/k limit at that step, it refines against the step's score instead of tau_mem
    (``refine_against_score``).
    """
    max_k = max(a.numel() for a in activations)
    steps = schedule.steps(max_k)
    batch = max(batch, 1)
    for start in range(0, len(steps), batch):
        chunk = steps[start:start + batch]
        sets = [candidate_set(z_scores, activations, theta, k) for theta, k in chunk]
        for step, ((theta, k), neurons, score) in enumerate(zip(chunk, sets, score_sets(sets, threshold)), start + 1):
            if score <= threshold:
                return InitialSelection(neurons, score, True, theta, k, step, schedule.at_limit(theta, k, max_k))
    return InitialSelection(neurons, score, False, theta, k, len(steps), True)


# A step of the refinement walk: (layer, None) re-activates the whole layer, (layer, n)
# removes the first occurrence of neuron n from the layer's list.
Removal = tuple[int, "int | None"]


def _apply(neurons: NeuronSet, removal: Removal) -> NeuronSet:
    layer, neuron = removal
    result = [list(indices) for indices in neurons]
    if neuron is None:
        result[layer] = []
    else:
        result[layer].remove(neuron)
    return result


def _same_set(a: NeuronSet, b: NeuronSet) -> bool:
    return all(set(x) == set(y) for x, y in zip(a, b))


def greedy_removal(neurons: NeuronSet, score: float, removals: list[Removal], score_sets: ScoreSets,
                   threshold: float, batch: int = 1) -> tuple[NeuronSet, float]:
    """Try the removals in order; keep each after which the set scores < threshold.

    ``score`` is the blocked score of ``neurons``. A rejected set's score is never used. A removal that leaves the set unchanged
    (another occurrence of the neuron is still listed) is scored as the current set, without
    a U-Net call: deactivation sees only the set, so the authors' fresh score is this one.

    Batched by speculation: from the current set, apply the next removals cumulatively
    until ``batch`` of them need scoring, and score those at once. Every removal before the
    first rejected one is exactly a sequential decision; the walk resumes after it.
    Unchanged sets are decided as they are met: before the first set that needs scoring on
    the current score, after it as kept (they score as the set before them, which the
    speculation assumes was kept). Returns the final list and its score.
    """
    batch = max(batch, 1)
    position = 0
    while position < len(removals):
        chain, to_score, previous = [], [], neurons  # chain: (list after the removal, unchanged?)
        for removal in removals[position:]:
            if len(to_score) == batch:
                break
            candidate = _apply(previous, removal)
            unchanged = _same_set(candidate, previous)
            if unchanged and not to_score and score >= threshold:
                chain.append((previous, True))  # rejected on the current score: the list stays
                continue
            chain.append((candidate, unchanged))
            if not unchanged:
                to_score.append(candidate)
            previous = candidate
        scores = iter(score_sets(to_score, threshold) if to_score else [])
        for candidate, unchanged in chain:
            position += 1
            candidate_score = score if unchanged else next(scores)
            if candidate_score < threshold:
                neurons, score = candidate, candidate_score
            elif not unchanged:
                break  # the rest of the chain assumed this removal was kept
    return neurons, score


def refine(neurons: NeuronSet, score: float, score_sets: ScoreSets, threshold: float,
           batch: int = 1) -> tuple[NeuronSet, float]:
    """SPEC §4.2-3, as the authors' ``neuron_refinement`` walks it.

    Layers (last to first, non-empty ones) are re-activated whole; then each remaining
    layer's list, as it stands when the walk reaches the layer, is walked occurrence by
    occurrence, last layer first: an occurrence of n removes the first remaining occurrence
    of n. A duplicated neuron is therefore really tested at its last occurrence, and its
    earlier occurrences are kept or dropped on the current set's score. Returns the refined
    list (duplicates that survive included, as the authors write it) and its score.
    """
    layer_removals = [(l, None) for l in reversed(range(len(neurons))) if neurons[l]]
    neurons, score = greedy_removal(neurons, score, layer_removals, score_sets, threshold, batch)
    neuron_removals = [(l, n) for l in reversed(range(len(neurons))) for n in neurons[l]]
    return greedy_removal(neurons, score, neuron_removals, score_sets, threshold, batch)


@dataclass(frozen=True)
class LocalizationConfig:
    """Script 3's config; defaults from the authors' script (SPEC §3-4), early decisions ours."""

    seed: int = DETECTION_SEED
    samples_per_prompt: int = SAMPLES_PER_PROMPT
    pairwise_ssim_threshold: float = MEMORIZATION_THRESHOLD
    ssim_threshold_initial_selection: float = MEMORIZATION_THRESHOLD
    ssim_threshold_refinement: float = MEMORIZATION_THRESHOLD
    schedule: SelectionSchedule = SelectionSchedule()
    batch_candidates: int = BATCH_CANDIDATES
    # True: a test is first probed on its likeliest seeds, and rejected there when their score
    # proves it (``BlockedScorer``); False: the full computation, every test on all seeds
    early_decisions: bool = True
    seeds_per_call: int = SEEDS_PER_CALL_CPU  # kept seeds in an early-decision probe
    decision_margin: float = DECISION_MARGIN


@dataclass
class LocalizationResult:
    initial_neurons: NeuronSet
    initial_score: float
    refined_neurons: NeuronSet
    refined_score: float
    seeds_to_look_at: list[int] = field(default_factory=list)
    seconds: float = 0.0
    unet_sample_forwards: int = 0
    sets_scored: int = 0
    selection_steps: int = 0  # (theta, k) steps of the initial selection
    seeds_skipped: int = 0  # kept seeds never forwarded for a test, thanks to early decisions
    # the least sample-forwards any walk with these decisions makes: a test scored below its
    # bound needs every kept seed, any other one seed (plus the unblocked call)
    forward_floor: int = 0


def set_key(neurons: NeuronSet) -> tuple:
    """A neuron set as deactivation sees it (per layer, sorted distinct neurons)."""
    return tuple(tuple(sorted(set(layer))) for layer in neurons)


def probe_scores(unblocked: torch.Tensor, blocked: torch.Tensor, seeds: list[int], kernel_size: int) -> torch.Tensor:
    """The probed seeds' MS-SSIM, each at most its MS-SSIM in the full batch of kept seeds.

    unblocked: every kept seed's map [n, 4, h, w]; blocked: the probed seeds' [m, 4, h, w]
    -> [m]. Beside the m pairs the batch holds a pair (blocked[0], u) for every unblocked
    map u, so at every scale its data range is max(range of the m blocked maps, range of all
    n unblocked maps): at most the full batch's, mostly all of it. On the test bed a seed's
    score is then its full-batch score for 80% of seeds (at most 0.03 under it), where the m
    pairs alone score a median 0.005 (at most 0.08) under it.
    """
    reference = torch.cat([unblocked[seeds], unblocked])  # [m + n, 4, h, w]
    maps = torch.cat([blocked, blocked[:1].expand(len(unblocked), -1, -1, -1)])  # [m + n, 4, h, w]
    return ms_ssim(reference, maps, kernel_size)[:len(seeds)]


class BlockedScorer:
    """Blocked scores of candidate sets for the kept samples of one prompt.

    The unblocked noise differences are computed once; a set without neurons is the
    unblocked model, scored 1 (MS-SSIM of a map with itself) without a U-Net call.

    The full computation forwards all kept seeds of a set in one U-Net call and scores them
    in one MS-SSIM batch, the authors' composition. With early decisions (the default) a
    test first forwards a probe: the ``seeds_per_call`` seeds that rejected a test most
    recently (before any rejection, those with the highest pairwise score). It is rejected
    when the probe's MS-SSIM (``probe_scores``) reaches ``bound + margin``: the blocked score
    is a max over seeds, and a seed's MS-SSIM with a data range at most the full batch's is at
    most its MS-SSIM in the full batch (no SSIM term decreases as the data range grows; see
    ``tests/test_localization.py``). The margin covers the float noise of another U-Net
    batch. A test the probe does not decide gets the full computation, so its score is the
    full computation's number. A probe is made only while it pays: while the estimated share
    of tests a probe decides is at least ``seeds_per_call / kept seeds`` (its cost over what a
    decided test saves). ``exact`` gives a set's score as the full computation makes it.
    """

    def __init__(self, noise: NoiseDifference, latents: torch.Tensor, unblocked: torch.Tensor,
                 kernel_size: int, config: LocalizationConfig, priority: torch.Tensor | None = None):
        self.noise, self.latents, self.unblocked = noise, latents, unblocked  # [n, 4, h, w] each
        self.kernel_size, self.config = kernel_size, config
        self.per_call = max(config.batch_candidates, 1)
        # the order in which a probe takes the kept seeds: highest first
        self.priority = priority.clone().float() if priority is not None else torch.zeros(len(latents))
        self.probe_size = min(max(config.seeds_per_call, 1), len(latents))
        self.probe_share = 1.0  # estimated share of tests a probe decides (recency-weighted)
        # a test the probe leaves open: a call of its own in the sequential walk (the full
        # computation's number), one shared call for prompts side by side (their point)
        self.solo_fallback = not isinstance(noise, LockstepNoise)
        self.sets_scored = self.seeds_skipped = 0
        self.forward_floor = len(latents)  # see LocalizationResult.forward_floor (the unblocked call's share)
        self.exact_scores: dict[tuple, float] = {}
        self.bar = None  # a tqdm bar counting the sets scored, when the caller wants one

    def __call__(self, sets: list[NeuronSet], bound: float = math.inf) -> list[float]:
        self.sets_scored += len(sets)
        if self.bar is not None:
            self.bar.update(len(sets))
        scores = [1.0] * len(sets)
        todo = [i for i, s in enumerate(sets) if count_neurons(s)]
        for start in range(0, len(todo), self.per_call):
            part = todo[start:start + self.per_call]
            for i, score in zip(part, self._score_group([sets[i] for i in part], bound)):
                scores[i] = score
                self.forward_floor += len(self.latents) if score < bound else 1
        return scores

    def exact(self, neurons: NeuronSet) -> float:
        """The blocked score of ``neurons`` as the full computation makes it (cached)."""
        if not count_neurons(neurons):
            return 1.0
        key = set_key(neurons)
        if key not in self.exact_scores:
            self._full([neurons], solo=True)
        return self.exact_scores[key]

    def _full(self, sets: list[NeuronSet], solo: bool) -> list[torch.Tensor]:
        """Per set the MS-SSIM of each kept seed [n], all seeds of a set in one MS-SSIM batch
        and all sets in one U-Net call. One set in a call of its own (``solo``) is the full
        computation's number: its max is cached."""
        blocked = self.noise(self.latents, sets, solo=solo)  # [sets, n, 4, h, w]
        per_seed = [ms_ssim(self.unblocked, b, self.kernel_size).cpu() for b in blocked]
        if len(sets) == 1 and solo:
            self.exact_scores[set_key(sets[0])] = per_seed[0].amax().item()
        return per_seed

    def _likeliest_seeds(self) -> list[int]:
        """The ``probe_size`` kept seeds first in ``priority``."""
        return torch.argsort(self.priority, descending=True, stable=True)[:self.probe_size].tolist()

    def _probe_seeds(self) -> list[int] | None:
        """The seeds of the next probe, or None while a probe does not pay."""
        if self.probe_size >= len(self.latents) or self.probe_share < self.probe_size / len(self.latents):
            return None
        return self._likeliest_seeds()

    def _put_first(self, seed: int) -> None:
        """The seed that rejected a test goes first in the next probe."""
        self.priority[seed] = self.priority.max() + 1

    def _learn(self, decided: bool) -> None:
        self.probe_share += PROBE_SHARE_RATE * (float(decided) - self.probe_share)

    def _score_group(self, sets: list[NeuronSet], bound: float) -> list[float]:
        if not self.config.early_decisions:
            return [s.amax().item() for s in self._full(sets, solo=True)]
        n, margin = len(self.latents), self.config.decision_margin
        scores: list[float | None] = [None] * len(sets)
        seeds = self._probe_seeds()
        if seeds is not None:
            for i, delta in enumerate(self.noise(self.latents[seeds], sets)):  # delta [probe, 4, h, w]
                partial = probe_scores(self.unblocked, delta, seeds, self.kernel_size).cpu()
                decided = partial.amax().item() >= bound + margin
                self._learn(decided)
                if decided:
                    scores[i] = partial.amax().item()  # at most the full score: rejected
                    self._put_first(seeds[int(partial.argmax())])
                    self.seeds_skipped += n - len(seeds)
        undecided = [i for i, score in enumerate(scores) if score is None]
        if not undecided:
            return scores
        would_probe = self._likeliest_seeds()
        if self.solo_fallback:  # one exact call per set: no score is ever recomputed
            per_seeds = [self._full([sets[i]], solo=True)[0] for i in undecided]
        else:  # prompts side by side: one shared call, a score within the margin recomputed
            per_seeds = self._full([sets[i] for i in undecided], solo=False)
        for i, per_seed in zip(undecided, per_seeds):
            score = per_seed.amax().item()
            if score >= bound:
                self._put_first(int(per_seed.argmax()))
            scores[i] = score if self.solo_fallback or abs(score - bound) > margin else self.exact(sets[i])
            if seeds is None:  # would a probe have decided? (its seeds' full-batch scores: an estimate)
                self._learn(per_seed[would_probe].amax().item() >= bound + margin)
        return scores


def localize_prompt(noise: NoiseDifference, latent_shape, z_scores, activations,
                    config: LocalizationConfig, kernel_size: int, progress: bool = False) -> LocalizationResult:
    """NeMo for one prompt (SPEC §4); ``noise`` holds the prompt's embedding. ``progress``:
    a bar of the sets scored within the prompt (under a per-prompt bar).

    The reported scores (initial and refined) are computed as the full computation does
    (``BlockedScorer.exact``), whatever path decided the tests.
    z_scores, activations: per layer [features].
    """
    start = time.perf_counter()
    counter = noise.counter = UNetCounter()
    latents = initial_latents(config.seed, config.samples_per_prompt, latent_shape)  # [n, 4, h, w]
    unblocked = noise(latents, solo=True)[0]  # [n, 4, h, w]
    per_sample = pairwise_max_scores(unblocked, kernel_size)
    keep = torch.nonzero(per_sample > config.pairwise_ssim_threshold).flatten()
    layers = len(activations)
    if keep.numel() == 0:
        return LocalizationResult(empty_set(layers), 0.0, empty_set(layers), 0.0, [],
                                  time.perf_counter() - start, counter.sample_forwards, 0)
    scorer = BlockedScorer(noise, latents[keep], unblocked[keep], kernel_size, config, per_sample[keep])
    if progress:
        scorer.bar = tqdm(desc="  sets scored", unit="set", leave=False, position=1)
    batch = config.batch_candidates
    initial = initial_selection(z_scores, activations, scorer, config.ssim_threshold_initial_selection,
                                config.schedule, batch)
    initial_score = scorer.exact(initial.neurons)
    # the authors refine against the last score when their loop stopped on its theta/k limit
    threshold = initial_score if initial.refine_against_score else config.ssim_threshold_refinement
    if progress:
        scorer.bar.set_postfix_str(f"theta {initial.theta:g}, k {initial.k}: refining")
    refined, _ = refine(initial.neurons, initial_score, scorer, threshold, batch)
    if progress:
        scorer.bar.close()
    logger.debug("theta %.2f k %d: %d initial, %d refined neurons", initial.theta, initial.k,
                 count_neurons(initial.neurons), count_neurons(refined))
    return LocalizationResult(initial.neurons, initial_score, refined, scorer.exact(refined), keep.tolist(),
                              time.perf_counter() - start, counter.sample_forwards, scorer.sets_scored,
                              initial.steps, scorer.seeds_skipped, scorer.forward_floor)


class Lockstep:
    """Prompts' walks side by side: each runs in its own thread, and a U-Net call waits until
    every running walk has one; then one merged call serves them all, in prompt order
    (``merged_noise_differences``). Solo requests (the full computation's calls) get a call
    of their own each, so their numbers are the sequential walk's."""

    def __init__(self, walks: int):
        self.condition = threading.Condition()
        self.running = walks
        self.pending: dict[int, tuple] = {}  # walk -> (noise, latents, sets, solo)
        self.results: dict[int, object] = {}  # walk -> deltas, or the exception of its call
        self.calls = 0

    def call(self, walk: int, noise: NoiseDifference, latents: torch.Tensor, sets: list[NeuronSet], solo: bool):
        with self.condition:
            self.pending[walk] = (noise, latents, sets, solo)
            self._run_when_all_wait()
            while walk not in self.results:
                self.condition.wait()
            result = self.results.pop(walk)
        if isinstance(result, BaseException):
            raise result
        return result

    def finish(self) -> None:
        with self.condition:
            self.running -= 1
            self._run_when_all_wait()

    def _run_when_all_wait(self) -> None:
        if not self.pending or len(self.pending) < self.running:
            return
        walks = sorted(self.pending)
        merged = [w for w in walks if not self.pending[w][3]]
        try:
            if merged:
                self.calls += 1
                self.results.update(zip(merged, merged_noise_differences([self.pending[w][:3] for w in merged])))
            for w in walks:
                if self.pending[w][3]:
                    noise, latents, sets, _ = self.pending[w]
                    self.calls += 1
                    self.results[w] = noise(latents, sets)
        except Exception as error:  # every waiting walk gets it
            self.results.update({w: error for w in walks if w not in self.results})
        self.pending.clear()
        self.condition.notify_all()


class LockstepNoise:
    """A prompt's ``NoiseDifference`` whose calls go through a ``Lockstep``."""

    def __init__(self, noise: NoiseDifference, lockstep: Lockstep, walk: int):
        self.noise, self.lockstep, self.walk = noise, lockstep, walk

    @property
    def counter(self):
        return self.noise.counter

    @counter.setter
    def counter(self, counter: UNetCounter) -> None:
        self.noise.counter = counter

    def __call__(self, latents: torch.Tensor, neuron_sets=None, solo: bool = False) -> torch.Tensor:
        sets = list(neuron_sets) if neuron_sets else [empty_set(len(self.noise.layers))]
        return self.lockstep.call(self.walk, self.noise, latents, sets, solo)


def localize_prompts(noises: list[NoiseDifference], latent_shape, z_scores: list, activations: list,
                     config: LocalizationConfig, kernel_size: int) -> list[LocalizationResult]:
    """``localize_prompt`` for several prompts side by side: one U-Net call carries every
    prompt's current test (each slice its own text embedding and neuron set). The decisions
    and rows are the sequential walk's (early decisions and the full computation's reported
    scores make them independent of the batch); ``seconds`` overlap."""
    lockstep = Lockstep(len(noises))
    results: list[LocalizationResult | None] = [None] * len(noises)
    errors: list[BaseException] = []

    def walk(i: int) -> None:
        try:
            results[i] = localize_prompt(LockstepNoise(noises[i], lockstep, i), latent_shape, z_scores[i],
                                         activations[i], config, kernel_size)
        except BaseException as error:
            errors.append(error)
        finally:
            lockstep.finish()

    threads = [threading.Thread(target=walk, args=(i,), daemon=True) for i in range(len(noises))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def localize_captions(pipe, layers: dict, statistics, captions: list[str], latent_shape, config: LocalizationConfig,
                      kernel_size: int, *, num_inference_steps: int, timestep_index: int, guidance_scale: float,
                      scaling_factor: float, progress: bool = False) -> list[LocalizationResult]:
    """NeMo for a few captions whose walks share U-Net calls (one: the plain walk), SPEC §3-4:
    each caption's first-step noise differences, its value-layer activations [features] per
    layer and their z-scores against ``statistics`` (script 1's), then initial selection and
    refinement."""
    from utils.methods.nemo.noise import prompt_noise_difference
    from utils.methods.nemo.statistics import prompt_activations

    noises = [prompt_noise_difference(pipe, layers, caption, num_inference_steps=num_inference_steps,
                                      timestep_index=timestep_index, guidance_scale=guidance_scale,
                                      scaling_factor=scaling_factor) for caption in captions]
    activations = [prompt_activations(layers, noise.text_embedding) for noise in noises]  # the noise's embedding
    z_scores = [statistics.z_scores(a) for a in activations]
    if len(captions) == 1:
        return [localize_prompt(noises[0], latent_shape, z_scores[0], activations[0], config, kernel_size,
                                progress=progress)]
    return localize_prompts(noises, latent_shape, z_scores, activations, config, kernel_size)
