"""Localization cost: the authors' schedule vs. the full computation vs. early decisions.

Part 1 (test bed): runs script 3's localization on the built-in test bed's memorized
prompts in one process, once per mode, checks that every mode finds the same neurons and
that early decisions report the full computation's scores, and prints wall time, U-Net
sample-forwards (one per latent per U-Net call), candidate sets scored, seeds skipped by
early decisions and the floor (the least forwards any walk with these decisions makes).
The "authors" mode is their script 3 restated with their U-Net calls: every noise
difference two calls over all samples (schedule indices 0 and 1, the first discarded), one
call of one latent per (theta, k) step to record activations, and in the refinement the
unblocked and all-blocked sets, every non-empty layer and every listed occurrence of a
neuron (duplicates included), then the refined set once more.

Part 2 (--unet sd14): a full-size SD v1.4 U-Net from its published config with random
weights (no download), fp16 on CUDA: time per scored set (10 latents at 64x64) for several
sets per call, and the projected per-prompt time for the paper's median neuron counts.
On the CPU it runs a reduced width unless --full.

    python -m benchmarks.localization                       # part 1 on the test bed
    python -m benchmarks.localization --unet sd14           # part 2
"""

from __future__ import annotations

import math
import os
import time

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

import testbed
from testbed.rehearsal import SD14_UNET_CONFIG
from utils import cli
from utils.diffusion import initial_latents, latent_shape
from utils.files import read_prompts, read_threshold
from utils.layers import count_neurons, empty_set, value_layers
from utils.methods.nemo import SEEDS_PER_CALL_CPU, SEEDS_PER_CALL_CUDA
from utils.methods.nemo.localization import LocalizationConfig, LocalizationResult, candidate_set, localize_prompt
from utils.methods.nemo.noise import NoiseDifference, UNetCounter, prompt_noise_difference
from utils.methods.nemo.score import ms_ssim, pairwise_max_scores
from utils.methods.nemo.statistics import compute_statistics, prompt_activations
from utils.models import load_pipeline, resolve_device

BATCH_SIZES = (0,)
# Paper §4.3 / SPEC §4: median neurons after the initial selection (VM, TM).
PAPER_MEDIAN_INITIAL_NEURONS = {"VM": 26.5, "TM": 674.5}


def authors_walk(noise: NoiseDifference, all_latents: torch.Tensor, z_scores, activations,
                 settings: LocalizationConfig, kernel_size: int) -> LocalizationResult:
    """Script 3 for one prompt with every U-Net call the authors' code makes (module docstring).

    all_latents: the prompt's [samples_per_prompt, 4, h, w] initial latents; z_scores,
    activations: per layer [features]. Seconds, sample-forwards and sets scored are theirs.
    """
    start = time.perf_counter()
    counter = noise.counter = UNetCounter()
    scored = 0

    def noise_difference(neurons=None) -> torch.Tensor:
        """compute_noise_diff: U-Net calls at schedule indices 0 and 1 over every sample, the
        second returned -> [samples, 4, h, w]."""
        sets = [neurons] if neurons is not None else None
        noise(all_latents, sets)
        return noise(all_latents, sets)[0]

    def score(neurons, reference: torch.Tensor) -> float:
        nonlocal scored
        scored += 1
        return ms_ssim(reference, noise_difference(neurons)[keep], kernel_size).amax().item()

    unblocked = noise_difference()  # script 3, l. 51
    keep = pairwise_max_scores(unblocked, kernel_size) > settings.pairwise_ssim_threshold  # l. 53-54
    if not keep.any():
        empty = empty_set(len(activations))
        return LocalizationResult(empty, 0.0, empty, 0.0, [], time.perf_counter() - start, counter.sample_forwards)
    schedule, max_k = settings.schedule, max(a.numel() for a in activations)
    theta = schedule.initial_theta if schedule.use_theta else math.inf
    k = schedule.initial_k if schedule.use_top_k else 0
    bound, steps = settings.ssim_threshold_refinement, 0
    while True:  # l. 82-97
        noise(all_latents[:1])  # initial_neuron_selection's collect_activations: one call of one latent
        steps += 1
        initial = candidate_set(z_scores, activations, theta, k)
        initial_score = score(initial, unblocked[keep])  # l. 84-85
        rejected = initial_score > settings.ssim_threshold_initial_selection
        if rejected:
            theta -= schedule.theta_reduction_per_step if theta > schedule.min_theta and schedule.use_theta else 0
            k += 1 if schedule.use_top_k else 0
        if schedule.at_limit(theta, k, max_k):
            bound = initial_score
            break
        if not rejected:
            break
    # neuron_refinement (utils/activation_detection.py)
    reference = noise_difference()[keep]  # l. 195
    noise_difference(initial)  # l. 206: the all-blocked set, used only by --rel_threshold_refinement
    refined = [list(layer) for layer in initial]
    for layer in reversed(range(len(refined))):  # l. 208-228: every non-empty layer
        if refined[layer]:
            candidate = [list(x) for x in refined]
            candidate[layer] = []
            if score(candidate, reference) < bound:
                refined = candidate
    for layer in reversed(range(len(refined))):  # l. 235-254: every occurrence, duplicates included
        for neuron in list(refined[layer]):
            candidate = [list(x) for x in refined]
            candidate[layer].remove(neuron)
            if score(candidate, reference) < bound:
                refined = candidate
    refined_score = score(refined, unblocked[keep])  # script 3, l. 107-108
    return LocalizationResult(initial, initial_score, refined, refined_score,
                              torch.nonzero(keep).flatten().tolist(), time.perf_counter() - start,
                              counter.sample_forwards, scored, steps)


def testbed_benchmark(args) -> dict:
    """Returns {mode: dict(seconds, forwards, sets)}; raises if any mode finds other neurons."""
    device = resolve_device(args.device)
    pipe = load_pipeline(args.model, device)
    layers = value_layers(pipe.unet)
    stats = compute_statistics(pipe, layers, read_prompts(args.statistics_prompts)["Caption"].tolist(), args.model)
    threshold = args.threshold or read_threshold(args.threshold_file)
    prompts = read_prompts(args.prompts)
    prompts = prompts[prompts["type"] == "VM"] if args.vm_only else prompts
    if args.per_type:
        prompts = prompts[prompts.groupby("type").cumcount() < prompts["type"].map(args.per_type).fillna(0)]
    captions = prompts["Caption"].tolist()[: args.limit]
    shape = latent_shape(pipe.unet)
    modes = ["authors"] + [f"{path} {b}" for b in args.batch_sizes for path in ("full", "early")]
    totals = {m: dict(seconds=0.0, forwards=0, sets=0, skipped=0, floor=0) for m in modes}
    print(f"{len(captions)} prompts, threshold {threshold:.4f}, modes: {', '.join(modes)} "
          f"(full/early N: the full computation or early decisions, --batch_candidates N)")
    for caption in captions:
        noise = prompt_noise_difference(pipe, layers, caption)  # localize_prompt gives it a fresh counter per run
        activations = prompt_activations(layers, noise.text_embedding)
        found, cost = {}, {}
        for mode in modes:
            batch = 0 if mode == "authors" else int(mode.split()[1])
            settings = LocalizationConfig(pairwise_ssim_threshold=threshold, ssim_threshold_initial_selection=threshold,
                                            ssim_threshold_refinement=threshold, batch_candidates=batch,
                                            early_decisions=mode.startswith("early"),
                                            seeds_per_call=SEEDS_PER_CALL_CUDA if device.type == "cuda" else SEEDS_PER_CALL_CPU)
            if mode == "authors":
                all_latents = initial_latents(settings.seed, settings.samples_per_prompt, shape)
                result = authors_walk(noise, all_latents, stats.z_scores(activations), activations, settings,
                                      testbed.SSIM_KERNEL_SIZE)
            else:
                result = localize_prompt(noise, shape, stats.z_scores(activations), activations, settings,
                                         testbed.SSIM_KERNEL_SIZE)
            found[mode] = (result.initial_neurons, result.refined_neurons, result.initial_score, result.refined_score)
            cost[mode] = f"{mode} {result.unet_sample_forwards} ({result.seconds:.1f} s)"
            totals[mode]["seconds"] += result.seconds
            totals[mode]["forwards"] += result.unet_sample_forwards
            totals[mode]["sets"] += result.sets_scored
            totals[mode]["skipped"] += result.seeds_skipped
            totals[mode]["floor"] += result.forward_floor
        reference = found[modes[0]]
        for mode in modes[1:]:
            if found[mode][:2] != reference[:2]:
                raise RuntimeError(f"'{caption}': {mode} found {found[mode][:2]}, the authors' code {reference[:2]}")
            if mode.startswith("early") and found[mode] != found["full" + mode[5:]]:
                raise RuntimeError(f"'{caption}': {mode} reports {found[mode][2:]}, the full computation "
                                   f"{found['full' + mode[5:]][2:]}")
        print(f"  {caption}: {count_neurons(reference[0])} initial, {count_neurons(reference[1])} refined neurons "
              f"(identical in all modes; early and full rows identical); sample-forwards {', '.join(cost.values())}, "
              f"floor {result.forward_floor}", flush=True)
    authors, floor = totals["authors"], totals[modes[1]]["floor"]
    print(f"\n{'mode':<10} {'seconds':>9} {'sample-forwards':>16} {'sets scored':>12} {'seeds skipped':>14} "
          f"{'time ratio':>11} {'forward ratio':>14} {'vs. floor':>10}")
    for mode in modes:
        t = totals[mode]
        print(f"{mode:<10} {t['seconds']:>9.1f} {t['forwards']:>16} {t['sets']:>12} {t['skipped']:>14} "
              f"{authors['seconds'] / t['seconds']:>10.2f}x {authors['forwards'] / max(t['forwards'], 1):>13.2f}x "
              f"{t['forwards'] / max(floor, 1):>9.2f}x")
    print(f"{'floor':<10} {'':>9} {floor:>16} {'':>12} {'':>14} {'':>11} {authors['forwards'] / max(floor, 1):>13.2f}x "
          f"{1:>9.2f}x\n(ratios against the authors' code; floor: every kept seed for a test scored below its "
          "bound, one seed for any other test, plus the unblocked call)")
    return totals


def per_type_counts(text: str) -> dict[str, int]:
    """'VM=3,TM=2' -> {'VM': 3, 'TM': 2}."""
    try:
        return {kind: int(count) for kind, count in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--per_type wants TYPE=N[,TYPE=N...], got {text!r}") from None


def time_call(call, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``repeats`` calls (synchronized on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    sync()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def sd14_benchmark(args) -> dict:
    """Returns {sets per call: seconds per scored set}."""
    device = resolve_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    config = dict(SD14_UNET_CONFIG)
    if device.type != "cuda" and not args.full:
        config.update(block_out_channels=(32, 64, 128, 128), sample_size=32, attention_head_dim=4)
    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    layers = value_layers(unet)
    size = config["sample_size"]
    text = torch.randn(1, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    noise = NoiseDifference(unet, layers, text, torch.tensor(961), DDIMScheduler(), counter=UNetCounter())
    latents = initial_latents(0, 10, (4, size, size))
    neurons = [[0, 1]] + [[]] * (len(layers) - 1)
    print(f"U-Net widths {config['block_out_channels']}, latents {size}x{size}, {device}, {dtype}")
    per_set = {}
    noise(latents, [neurons])  # warm-up
    for sets in args.sets_per_call:
        seconds = time_call(lambda: noise(latents, [neurons] * sets), device, max(1, args.repeats))
        per_set[sets] = seconds / sets
        print(f"{sets:>3} sets per call: {1000 * per_set[sets]:8.1f} ms per scored set, "
              f"{10 * sets / seconds:8.1f} sample-forwards/s")
    probe = time_call(lambda: noise(latents[:1], [neurons]), device, max(1, args.repeats))
    full = per_set[1] if 1 in per_set else per_set[min(per_set)] * min(per_set)
    print(f"one test: authors' schedule {2 * full:.2f} s (two calls of 10 latents), full computation {full:.2f} s, "
          f"early decision {probe:.2f} s when its one-seed probe rejects, {probe + full:.2f} s when it does not")
    best = min(per_set.values())
    for kind, initial in PAPER_MEDIAN_INITIAL_NEURONS.items():
        # unblocked + about 4 selection steps + 7 layers + one set per initial neuron
        sets = 1 + 4 + 7 + initial
        print(f"projected {kind} prompt ({initial} initial neurons, ~{sets:.0f} sets): "
              f"{sets * per_set[min(per_set)]:.1f} s sequential, {sets * best:.1f} s batched")
    return per_set


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--unet", choices=("testbed", "sd14"), default="testbed", help="which benchmark")
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="test bed model folder")
    parser.add_argument("--prompts", default=testbed.MEMORIZED_PROMPTS,
                        help="memorized prompts")
    parser.add_argument("--statistics_prompts", default=testbed.ADDITIONAL_PROMPTS,
                        help="hold-out prompts for the activation statistics")
    parser.add_argument("--threshold", type=float, default=None, help="tau_mem (default: from --threshold_file)")
    parser.add_argument("--threshold_file", default=os.path.join(testbed.TESTBED_DIR, "threshold.json"),
                        help="script 2's threshold json for the test bed")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--vm_only", action="store_true", help="only VM prompts")
    parser.add_argument("--per_type", type=per_type_counts, default=None,
                        help="only the first N prompts of each named type, e.g. VM=3,TM=2 (types not named: none)")
    parser.add_argument("--batch_sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(BATCH_SIZES),
                        help="--batch_candidates values to compare, each as the full computation and with early "
                             "decisions (0 = one set at a time)")
    parser.add_argument("--sets_per_call", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8],
                        help="sd14: candidate sets per U-Net call")
    parser.add_argument("--repeats", type=int, default=3, help="sd14: timed calls per setting")
    parser.add_argument("--full", action="store_true", help="sd14: full width on the CPU too")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    torch.manual_seed(0)
    return (sd14_benchmark if args.unet == "sd14" else testbed_benchmark)(args)


if __name__ == "__main__":
    cli.run(main)
