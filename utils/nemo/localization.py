"""NeMo's per-prompt localization (SPEC §4): initial selection, then refinement.

The search functions take a ``score_sets`` callable (list of neuron sets -> list of
blocked scores), so they run on a real U-Net or on a scripted score in tests. Every
walk evaluates up to ``batch`` candidate sets per call and keeps the sequential
algorithm's decisions exactly (speculation on cumulative removals, see ``greedy_removal``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from utils.defaults import (BATCH_CANDIDATES, DETECTION_SEED, INITIAL_K, INITIAL_THETA, MEMORIZATION_THRESHOLD,
                            MIN_THETA, SAMPLES_PER_PROMPT, THETA_REDUCTION_PER_STEP)
from utils.diffusion import initial_latents
from utils.layers import NeuronSet, count_neurons, empty_set
from utils.nemo.noise import NoiseDifference, UNetCounter
from utils.nemo.score import blocked_scores, pairwise_max_scores

logger = logging.getLogger(__name__)

ScoreSets = Callable[[list[NeuronSet]], list[float]]

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
        for step, ((theta, k), neurons, score) in enumerate(zip(chunk, sets, score_sets(sets)), start + 1):
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

    ``score`` is the blocked score of ``neurons``. A removal that leaves the set unchanged
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
        scores = iter(score_sets(to_score) if to_score else [])
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
class LocalizationSettings:
    """Script 3's settings; defaults from the authors' script (SPEC §3-4)."""

    seed: int = DETECTION_SEED
    samples_per_prompt: int = SAMPLES_PER_PROMPT
    pairwise_ssim_threshold: float = MEMORIZATION_THRESHOLD
    ssim_threshold_initial_selection: float = MEMORIZATION_THRESHOLD
    ssim_threshold_refinement: float = MEMORIZATION_THRESHOLD
    schedule: SelectionSchedule = SelectionSchedule()
    batch_candidates: int = BATCH_CANDIDATES


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


class BlockedScorer:
    """Blocked scores of candidate sets for the kept samples of one prompt.

    The unblocked noise differences are computed once; a set without neurons is the
    unblocked model, scored 1 (MS-SSIM of a map with itself) without a U-Net call.
    """

    def __init__(self, noise: NoiseDifference, latents: torch.Tensor, unblocked: torch.Tensor,
                 kernel_size: int, batch_candidates: int):
        self.noise, self.latents, self.unblocked = noise, latents, unblocked
        self.kernel_size = kernel_size
        self.per_call = max(batch_candidates, 1)
        self.sets_scored = 0

    def __call__(self, sets: list[NeuronSet]) -> list[float]:
        self.sets_scored += len(sets)
        scores = [1.0] * len(sets)
        todo = [i for i, s in enumerate(sets) if count_neurons(s)]
        for start in range(0, len(todo), self.per_call):
            part = todo[start:start + self.per_call]
            blocked = self.noise(self.latents, [sets[i] for i in part])  # [len(part), n, 4, h, w]
            for i, score in zip(part, blocked_scores(self.unblocked, blocked, self.kernel_size).tolist()):
                scores[i] = score
        return scores


def localize_prompt(noise: NoiseDifference, latent_shape, z_scores, activations,
                    settings: LocalizationSettings, kernel_size: int,
                    scorer_type: type[BlockedScorer] = BlockedScorer) -> LocalizationResult:
    """NeMo for one prompt (SPEC §4); ``noise`` holds the prompt's embedding.

    z_scores, activations: per layer [features].
    """
    start = time.perf_counter()
    counter = noise.counter = UNetCounter()
    latents = initial_latents(settings.seed, settings.samples_per_prompt, latent_shape)  # [n, 4, h, w]
    unblocked = noise(latents)[0]  # [n, 4, h, w]
    per_sample = pairwise_max_scores(unblocked, kernel_size)
    keep = torch.nonzero(per_sample > settings.pairwise_ssim_threshold).flatten()
    layers = len(activations)
    if keep.numel() == 0:
        return LocalizationResult(empty_set(layers), 0.0, empty_set(layers), 0.0, [],
                                  time.perf_counter() - start, counter.sample_forwards, 0)
    scorer = scorer_type(noise, latents[keep], unblocked[keep], kernel_size, settings.batch_candidates)
    batch = settings.batch_candidates
    initial = initial_selection(z_scores, activations, scorer, settings.ssim_threshold_initial_selection,
                                settings.schedule, batch)
    # the authors refine against the last score when their loop stopped on its theta/k limit
    threshold = initial.score if initial.refine_against_score else settings.ssim_threshold_refinement
    refined, refined_score = refine(initial.neurons, initial.score, scorer, threshold, batch)
    logger.debug("theta %.2f k %d: %d initial, %d refined neurons", initial.theta, initial.k,
                 count_neurons(initial.neurons), count_neurons(refined))
    return LocalizationResult(initial.neurons, initial.score, refined, refined_score, keep.tolist(),
                              time.perf_counter() - start, counter.sample_forwards, scorer.sets_scored, initial.steps)
