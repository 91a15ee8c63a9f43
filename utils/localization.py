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

from utils.layers import NeuronSet, count_neurons, empty_set
from utils.noise import NoiseDifference, UNetCounter, initial_latents
from utils.score import blocked_scores, pairwise_max_scores

logger = logging.getLogger(__name__)

ScoreSets = Callable[[list[NeuronSet]], list[float]]

# Authors' script 3 defaults (SPEC §4).
MEMORIZATION_THRESHOLD = 0.428  # tau_mem, paper §4 / script 2 on LAION
INITIAL_THETA = 5.0
THETA_REDUCTION_PER_STEP = 0.25
MIN_THETA = 1.0
INITIAL_K = 0
# Sets scored per U-Net call; 0 = the plain sequential walk. On the CPU the sequential walk
# is fastest (speculated sets after a rejection are wasted and a bigger batch is no faster
# per latent: BENCHMARKS.md); GPU figures are still to be measured.
BATCH_CANDIDATES = 0


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
            if theta == 1 or k >= max_k or len(steps) > 10 * max_k:
                return steps


def candidate_set(z_scores: list[torch.Tensor], activations: list[torch.Tensor], theta: float, k: int) -> NeuronSet:
    """Per layer: neurons with |z| > theta (ascending), then the k largest |a| not yet in.

    z_scores, activations: per layer [features].
    """
    neurons = []
    for z, a in zip(z_scores, activations):
        chosen = torch.nonzero(z.abs() > theta).flatten().tolist()
        taken = set(chosen)
        if k > 0:
            chosen += [i for i in torch.topk(a.abs(), min(k, a.numel())).indices.tolist() if i not in taken]
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


def initial_selection(z_scores, activations, score_sets: ScoreSets, threshold: float,
                      schedule: SelectionSchedule = SelectionSchedule(), batch: int = 1) -> InitialSelection:
    """SPEC §4.1: the first (theta, k) step whose blocked score is <= threshold.

    If none is, the last step's set, with its score as the refinement threshold.
    """
    steps = schedule.steps(max(a.numel() for a in activations))
    batch = max(batch, 1)
    for start in range(0, len(steps), batch):
        chunk = steps[start:start + batch]
        sets = [candidate_set(z_scores, activations, theta, k) for theta, k in chunk]
        for step, ((theta, k), neurons, score) in enumerate(zip(chunk, sets, score_sets(sets)), start + 1):
            if score <= threshold:
                return InitialSelection(neurons, score, True, theta, k, step)
    return InitialSelection(neurons, score, False, theta, k, len(steps))


def _without(neurons: NeuronSet, removal: list[tuple[int, int]]) -> NeuronSet:
    drop = set(removal)
    return [[n for n in layer if (l, n) not in drop] for l, layer in enumerate(neurons)]


def greedy_removal(neurons: NeuronSet, removals: list[list[tuple[int, int]]], score_sets: ScoreSets,
                   threshold: float, batch: int = 1) -> tuple[NeuronSet, float | None]:
    """Try the removals in order; keep each whose set still scores < threshold.

    Batched by speculation: with current set S and next removals r1..rB, score
    S-r1, S-r1-r2, ..., S-r1..rB at once. Every removal before the first failing set
    is exactly a sequential decision; the failing one is rejected and the walk resumes
    after it. Returns the final set and the score of the last accepted set (None if none).
    """
    batch = max(batch, 1)
    last_score = None
    position = 0
    while position < len(removals):
        chunk = removals[position:position + batch]
        candidates, current = [], neurons
        for removal in chunk:
            current = _without(current, removal)
            candidates.append(current)
        position += len(chunk)
        for offset, score in enumerate(score_sets(candidates)):
            if score < threshold:
                neurons, last_score = candidates[offset], score
            else:
                position -= len(chunk) - offset - 1
                break
    return neurons, last_score


def refine(neurons: NeuronSet, score: float, score_sets: ScoreSets, threshold: float,
           batch: int = 1) -> tuple[NeuronSet, float]:
    """SPEC §4.2-3: drop whole layers (last to first), then single neurons (last layer first)."""
    layer_removals = [[(l, n) for n in neurons[l]] for l in reversed(range(len(neurons))) if neurons[l]]
    neurons, layer_score = greedy_removal(neurons, layer_removals, score_sets, threshold, batch)
    neuron_removals = [[(l, n)] for l in reversed(range(len(neurons))) for n in neurons[l]]
    neurons, neuron_score = greedy_removal(neurons, neuron_removals, score_sets, threshold, batch)
    for tracked in (neuron_score, layer_score):
        if tracked is not None:
            return neurons, tracked
    return neurons, score


@dataclass(frozen=True)
class LocalizationSettings:
    """Script 3's settings; defaults from the authors' script (SPEC §3-4)."""

    seed: int = 1
    samples_per_prompt: int = 10
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
    # the authors refine against the last score when the initial selection gave up
    threshold = settings.ssim_threshold_refinement if initial.found else initial.score
    refined, refined_score = refine(initial.neurons, initial.score, scorer, threshold, batch)
    logger.debug("theta %.2f k %d: %d initial, %d refined neurons", initial.theta, initial.k,
                 count_neurons(initial.neurons), count_neurons(refined))
    return LocalizationResult(initial.neurons, initial.score, refined, refined_score, keep.tolist(),
                              time.perf_counter() - start, counter.sample_forwards, scorer.sets_scored, initial.steps)
