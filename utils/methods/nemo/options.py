"""Script 2's and script 3's NeMo flags (the authors' names and defaults, SPEC §3-4) and the
localization settings they make. Torch-free."""

from __future__ import annotations

import argparse

from utils import cli
from utils.methods.nemo import (BATCH_CANDIDATES, DETECTION_GUIDANCE_SCALE, DETECTION_SEED, INITIAL_K, INITIAL_THETA,
                                MEMORIZATION_THRESHOLD, MIN_THETA, NUM_INFERENCE_STEPS, PARALLEL_PROMPTS,
                                SAMPLES_PER_PROMPT, SCALING_FACTOR, SEEDS_PER_CALL_CPU, SEEDS_PER_CALL_CUDA,
                                SMOKE_ACCEPT_ALL, SMOKE_K, SMOKE_REJECT_ALL, SMOKE_SAMPLES_PER_PROMPT, SMOKE_THETA,
                                SSIM_KERNEL_SIZE, THETA_REDUCTION_PER_STEP, TIMESTEP_INDEX)


def add_detection_args(parser: argparse.ArgumentParser, seed: int = DETECTION_SEED) -> None:
    """Noise-difference settings of SPEC §3."""
    group = parser.add_argument_group("noise differences (SPEC §3)")
    group.add_argument("-s", "--seed", type=int, default=seed, help="seed of the initial latents")
    group.add_argument("--samples_per_prompt", type=cli.positive_int, default=SAMPLES_PER_PROMPT,
                       help="initial latents (seeds) per prompt")
    group.add_argument("--num_inference_steps", type=cli.positive_int, default=NUM_INFERENCE_STEPS,
                       help="DDIM schedule length; sets the detection timestep")
    group.add_argument("--timestep_index", type=cli.non_negative_int, default=TIMESTEP_INDEX,
                       help="schedule index of the one noise prediction (authors: 1, i.e. t=961 for SD)")
    group.add_argument("--guidance_scale", type=cli.non_negative_float, default=DETECTION_GUIDANCE_SCALE,
                       help="classifier-free guidance of the noise prediction (0: conditional only)")
    group.add_argument("-sf", "--scaling_factor", type=float, default=SCALING_FACTOR,
                       help="factor applied to deactivated neurons")
    group.add_argument("--ssim_kernel_size", type=cli.positive_int, default=SSIM_KERNEL_SIZE,
                       help="MS-SSIM kernel size (11 for SD's 64x64 latents; 5 for the 24x24 test bed)")


def add_localization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("localization (SPEC §4)")
    tau = MEMORIZATION_THRESHOLD
    group.add_argument("--memorization_threshold", type=float, default=None,
                       help=f"set all three thresholds below at once (default: each its own, {tau})")
    group.add_argument("--pairwise_ssim_threshold", type=float, default=tau,
                       help="a seed is looked at when its max pairwise score exceeds this")
    group.add_argument("--ssim_threshold_initial_selection", type=float, default=tau,
                       help="initial selection stops at a blocked score <= this")
    group.add_argument("--ssim_threshold_refinement", type=float, default=tau,
                       help="refinement drops neurons while the blocked score stays < this")
    group.add_argument("--initial_theta", type=float, default=INITIAL_THETA, help="first z-score cut")
    group.add_argument("--theta_reduction_per_step", type=cli.positive_float, default=THETA_REDUCTION_PER_STEP,
                       help="theta decrease per failed step")
    group.add_argument("--min_theta", type=float, default=MIN_THETA, help="lowest theta")
    group.add_argument("--no_theta", action="store_true", help="select by top-k activations only")
    group.add_argument("--initial_k", type=cli.non_negative_int, default=INITIAL_K, help="first top-k per layer")
    group.add_argument("--no_top_k", action="store_true", help="select by z-score only")
    group.add_argument("--batch_candidates", "--batch-candidates", type=cli.non_negative_int,
                       default=BATCH_CANDIDATES,
                       help="candidate sets scored per U-Net call; 0 = one at a time (same results)")
    group.add_argument("--no_early_decisions", dest="early_decisions", action="store_false",
                       help="turn early decisions off and score every test on all kept seeds, the full "
                            "computation (same rows, more U-Net forwards). Early decisions (ours, BENCHMARKS.md): a test is first probed on its likeliest seeds and rejected there when "
                            "their score proves it; the default below says whether they are on")
    group.add_argument("--smoke", action="store_true",
                       help="smoke test, not results (ours): 2 seeds kept whatever their score, the first (theta, k) "
                            "step's top-1 neuron per layer accepted, every refinement test rejected by its probe: "
                            "each step of the walk once, at any model size (CI's real-shape pass); overrides the "
                            "flags above")
    group.add_argument("--parallel_prompts", type=cli.positive_int, default=PARALLEL_PROMPTS,
                       help="advance N prompts' walks side by side, one U-Net call carrying each one's current test "
                            "(for GPUs; same rows; ours)")
    group.add_argument("--seeds_per_call", type=cli.positive_int, default=None,
                       help=f"kept seeds in an early-decision probe (default: "
                            f"{SEEDS_PER_CALL_CPU} on the CPU, {SEEDS_PER_CALL_CUDA} on CUDA; ours)")


def localization_config(args: argparse.Namespace, device_type: str = "cpu"):
    """Script 3's ``LocalizationConfig`` from its flags (``device_type``: 'cpu' or 'cuda')."""
    from utils.methods.nemo import localization

    if args.memorization_threshold is not None:
        args.pairwise_ssim_threshold = args.ssim_threshold_initial_selection = args.memorization_threshold
        args.ssim_threshold_refinement = args.memorization_threshold
    if args.smoke:
        args.samples_per_prompt, args.pairwise_ssim_threshold = SMOKE_SAMPLES_PER_PROMPT, SMOKE_REJECT_ALL
        args.ssim_threshold_initial_selection = SMOKE_ACCEPT_ALL
        args.ssim_threshold_refinement = SMOKE_REJECT_ALL
        args.initial_theta = args.min_theta = SMOKE_THETA
        args.initial_k, args.no_theta, args.no_top_k = SMOKE_K, False, False
        args.batch_candidates, args.early_decisions = 0, True
    schedule = localization.SelectionSchedule(args.initial_theta, args.theta_reduction_per_step, args.min_theta,
                                              args.initial_k, not args.no_theta, not args.no_top_k)
    return localization.LocalizationConfig(args.seed, args.samples_per_prompt, args.pairwise_ssim_threshold,
                                             args.ssim_threshold_initial_selection, args.ssim_threshold_refinement,
                                             schedule, args.batch_candidates, args.early_decisions,
                                             args.seeds_per_call or (SEEDS_PER_CALL_CUDA if device_type == "cuda"
                                                                     else SEEDS_PER_CALL_CPU))
