"""Flag groups shared by the numbered scripts (names and defaults of the authors' scripts)."""

from __future__ import annotations

import argparse
import logging

from utils import localization, noise, score
from utils.layers import value_layers
from utils.models import MODEL_VERSIONS, load_pipeline, resolve_device
from utils.noise import latent_shape


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the script docstring's layout."""


DEFAULTS_SOURCE = ("Defaults are those of the authors' scripts (ml-research/localizing_memorization_in_diffusion_models) "
                   "and the paper; README.md lists where this suite differs.")


def parser_for(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter, epilog=DEFAULTS_SOURCE)


def add_model_args(parser: argparse.ArgumentParser, default_version: str = "v1-4") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-v", "--version", default=default_version,
                       help=f"model: {', '.join(f'{k} ({v})' for k, v in MODEL_VERSIONS.items())}, "
                            "any hub id, or a local diffusers folder")
    group.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")


def add_detection_args(parser: argparse.ArgumentParser, seed: int = 1) -> None:
    """Noise-difference settings of SPEC §3."""
    group = parser.add_argument_group("noise differences (SPEC §3)")
    group.add_argument("-s", "--seed", type=int, default=seed, help="seed of the initial latents")
    group.add_argument("--samples_per_prompt", type=int, default=noise.SAMPLES_PER_PROMPT,
                       help="initial latents (seeds) per prompt")
    group.add_argument("--num_inference_steps", type=int, default=noise.NUM_INFERENCE_STEPS,
                       help="DDIM schedule length; sets the detection timestep")
    group.add_argument("--timestep_index", type=int, default=noise.TIMESTEP_INDEX,
                       help="schedule index of the one noise prediction (authors: 1, i.e. t=961 for SD)")
    group.add_argument("--guidance_scale", type=float, default=noise.DETECTION_GUIDANCE_SCALE,
                       help="classifier-free guidance of the noise prediction (0: conditional only)")
    group.add_argument("-sf", "--scaling_factor", type=float, default=0.0,
                       help="factor applied to deactivated neurons")
    group.add_argument("--ssim_kernel_size", type=int, default=score.SSIM_KERNEL_SIZE,
                       help="MS-SSIM kernel size (11 for SD's 64x64 latents; 5 for the 24x24 test bed)")


def add_run_args(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    group = parser.add_argument_group("run")
    if resumable:
        group.add_argument("--resume", "--continue_run", dest="resume", action="store_true",
                           help="keep the results of an earlier run with the same settings and continue after them")
    group.add_argument("--limit", type=int, default=None, help="only the first N prompts (quick runs)")
    group.add_argument("--log_level", default="INFO", help="logging level")


def add_localization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("localization (SPEC §4)")
    tau = localization.MEMORIZATION_THRESHOLD
    group.add_argument("--memorization_threshold", type=float, default=None,
                       help=f"set all three thresholds below at once (default: each its own, {tau})")
    group.add_argument("--pairwise_ssim_threshold", type=float, default=tau,
                       help="a seed is looked at when its max pairwise score exceeds this")
    group.add_argument("--ssim_threshold_initial_selection", type=float, default=tau,
                       help="initial selection stops at a blocked score <= this")
    group.add_argument("--ssim_threshold_refinement", type=float, default=tau,
                       help="refinement drops neurons while the blocked score stays < this")
    group.add_argument("--initial_theta", type=float, default=localization.INITIAL_THETA, help="first z-score cut")
    group.add_argument("--theta_reduction_per_step", type=float, default=localization.THETA_REDUCTION_PER_STEP,
                       help="theta decrease per failed step")
    group.add_argument("--min_theta", type=float, default=localization.MIN_THETA, help="lowest theta")
    group.add_argument("--no_theta", action="store_true", help="select by top-k activations only")
    group.add_argument("--initial_k", type=int, default=localization.INITIAL_K, help="first top-k per layer")
    group.add_argument("--no_top_k", action="store_true", help="select by z-score only")
    group.add_argument("--batch_candidates", "--batch-candidates", type=int, default=localization.BATCH_CANDIDATES,
                       help="candidate sets scored per U-Net call; 0 = one at a time (same results)")


def localization_settings(args: argparse.Namespace) -> localization.LocalizationSettings:
    if args.memorization_threshold is not None:
        args.pairwise_ssim_threshold = args.ssim_threshold_initial_selection = args.memorization_threshold
        args.ssim_threshold_refinement = args.memorization_threshold
    schedule = localization.SelectionSchedule(args.initial_theta, args.theta_reduction_per_step, args.min_theta,
                                              args.initial_k, not args.no_theta, not args.no_top_k)
    return localization.LocalizationSettings(args.seed, args.samples_per_prompt, args.pairwise_ssim_threshold,
                                             args.ssim_threshold_initial_selection, args.ssim_threshold_refinement,
                                             schedule, args.batch_candidates)


def versioned_path(path: str, version: str) -> str:
    """``results/x.csv`` -> ``results/x_v1_4.csv`` for a version alias (the authors' naming);
    other model sources leave the path as given."""
    if version not in MODEL_VERSIONS:
        return path
    stem, dot, extension = path.rpartition(".")
    return f"{stem}_{version.replace('-', '_')}.{extension}" if dot else f"{path}_{version.replace('-', '_')}"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Flags that may change between a run and its --resume without changing its results.
RESUME_FREE_FLAGS = ("resume", "limit", "log_level", "batch_candidates", "device")


def run_settings(args: argparse.Namespace) -> dict:
    """The flags a resumed run must share with the run it continues."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_FREE_FLAGS}


def pending(shard, total: int, done: set[int], limit: int | None) -> list[int]:
    """This process's prompt indices among the first ``limit`` that are not ``done``."""
    return [i for i in shard.indices(total, limit) if i not in done]


def run(main) -> None:
    """Run a script's ``main``; a bad input (ValueError) ends it with a one-line message."""
    import os
    import sys

    try:
        main()
    except ValueError as error:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {error}")


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the flags and configure logging once (--log_level)."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    return args


def load_detection_model(args: argparse.Namespace):
    """(pipeline, value layers, latent shape) for scripts 2 and 3; the SSIM window is checked
    against the latent size before any work is done."""
    pipe = load_pipeline(args.version, resolve_device(args.device))
    shape = latent_shape(pipe.unet)
    score.check_ssim_size(shape[-1], args.ssim_kernel_size)
    return pipe, value_layers(pipe.unet), shape
