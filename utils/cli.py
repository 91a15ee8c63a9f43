"""Flag groups shared by the numbered scripts (names and defaults of the authors' scripts).

Torch-free, like ``utils.defaults``: a script builds its parser and checks its flags before
it imports torch, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from utils import defaults


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the script docstring's layout."""


DEFAULTS_SOURCE = ("Defaults are those of the authors' scripts (ml-research/localizing_memorization_in_diffusion_models) "
                   "and the paper; README.md lists where this suite differs.")


def parser_for(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter, epilog=DEFAULTS_SOURCE)


# Flag types: a count, step or size out of range is an error naming the flag, before any work.

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, default_version: str = defaults.DEFAULT_VERSION,
                   default_dtype: str = defaults.DEFAULT_DTYPE, dtype_help: str = "precision the model runs in") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-v", "--version", default=default_version,
                       help=f"model: {', '.join(f'{k} ({v})' for k, v in defaults.MODEL_VERSIONS.items())}, "
                            "any hub id, or a local diffusers folder")
    group.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")
    group.add_argument("--dtype", choices=defaults.DTYPES, default=default_dtype,
                       help=f"{dtype_help}; auto: float16 on CUDA (the paper's setting), float32 elsewhere")


def add_detection_args(parser: argparse.ArgumentParser, seed: int = defaults.DETECTION_SEED) -> None:
    """Noise-difference settings of SPEC §3."""
    group = parser.add_argument_group("noise differences (SPEC §3)")
    group.add_argument("-s", "--seed", type=int, default=seed, help="seed of the initial latents")
    group.add_argument("--samples_per_prompt", type=positive_int, default=defaults.SAMPLES_PER_PROMPT,
                       help="initial latents (seeds) per prompt")
    group.add_argument("--num_inference_steps", type=positive_int, default=defaults.NUM_INFERENCE_STEPS,
                       help="DDIM schedule length; sets the detection timestep")
    group.add_argument("--timestep_index", type=non_negative_int, default=defaults.TIMESTEP_INDEX,
                       help="schedule index of the one noise prediction (authors: 1, i.e. t=961 for SD)")
    group.add_argument("--guidance_scale", type=non_negative_float, default=defaults.DETECTION_GUIDANCE_SCALE,
                       help="classifier-free guidance of the noise prediction (0: conditional only)")
    group.add_argument("-sf", "--scaling_factor", type=float, default=defaults.SCALING_FACTOR,
                       help="factor applied to deactivated neurons")
    group.add_argument("--ssim_kernel_size", type=positive_int, default=defaults.SSIM_KERNEL_SIZE,
                       help="MS-SSIM kernel size (11 for SD's 64x64 latents; 5 for the 24x24 test bed)")


def add_run_args(parser: argparse.ArgumentParser, resumable: bool = True, limit: bool = True,
                 what: str = "prompts") -> None:
    """--overwrite (ours), --resume/--continue_run (the authors' script 3), --limit and --log_level (ours)."""
    group = parser.add_argument_group("run (a rerun with the same settings continues; README: Reruns)")
    group.add_argument("--overwrite", action="store_true",
                       help="ours: replace an output made with other settings instead of refusing to touch it")
    if resumable:
        group.add_argument("--resume", "--continue_run", dest="resume", action="store_true",
                           help="authors' --continue_run: keep the rows of an earlier run with the same settings and "
                                "continue after them (a rerun does so anyway; other settings are refused)")
    if limit:
        group.add_argument("--limit", type=positive_int, default=None,
                           help=f"ours: only the first N {what} (quick runs; a later run may raise it and continue)")
    group.add_argument("--log_level", "--log-level", dest="log_level", default="INFO", help="ours: logging level")


def add_localization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("localization (SPEC §4)")
    tau = defaults.MEMORIZATION_THRESHOLD
    group.add_argument("--memorization_threshold", type=float, default=None,
                       help=f"set all three thresholds below at once (default: each its own, {tau})")
    group.add_argument("--pairwise_ssim_threshold", type=float, default=tau,
                       help="a seed is looked at when its max pairwise score exceeds this")
    group.add_argument("--ssim_threshold_initial_selection", type=float, default=tau,
                       help="initial selection stops at a blocked score <= this")
    group.add_argument("--ssim_threshold_refinement", type=float, default=tau,
                       help="refinement drops neurons while the blocked score stays < this")
    group.add_argument("--initial_theta", type=float, default=defaults.INITIAL_THETA, help="first z-score cut")
    group.add_argument("--theta_reduction_per_step", type=positive_float, default=defaults.THETA_REDUCTION_PER_STEP,
                       help="theta decrease per failed step")
    group.add_argument("--min_theta", type=float, default=defaults.MIN_THETA, help="lowest theta")
    group.add_argument("--no_theta", action="store_true", help="select by top-k activations only")
    group.add_argument("--initial_k", type=non_negative_int, default=defaults.INITIAL_K, help="first top-k per layer")
    group.add_argument("--no_top_k", action="store_true", help="select by z-score only")
    group.add_argument("--batch_candidates", "--batch-candidates", type=non_negative_int,
                       default=defaults.BATCH_CANDIDATES,
                       help="candidate sets scored per U-Net call; 0 = one at a time (same results)")
    group.add_argument("--no_early_decisions", dest="early_decisions", action="store_false",
                       help="turn early decisions off and score every test on all kept seeds, the full "
                            "computation (same rows, more U-Net forwards). Early decisions (ours, BENCHMARKS.md "
                            "issue 23): a test is first probed on its likeliest seeds and rejected there when "
                            "their score proves it; the default below says whether they are on")
    group.add_argument("--smoke", action="store_true",
                       help="smoke test, not results (ours): 2 seeds kept whatever their score, the first (theta, k) "
                            "step's top-1 neuron per layer accepted, every refinement test rejected by its probe: "
                            "each step of the walk once, at any model size (CI's real-shape pass); overrides the "
                            "flags above")
    group.add_argument("--parallel_prompts", type=positive_int, default=defaults.PARALLEL_PROMPTS,
                       help="advance N prompts' walks side by side, one U-Net call carrying each one's current test "
                            "(for GPUs; same rows; ours)")
    group.add_argument("--seeds_per_call", type=positive_int, default=None,
                       help=f"kept seeds in an early-decision probe (default: "
                            f"{defaults.SEEDS_PER_CALL_CPU} on the CPU, {defaults.SEEDS_PER_CALL_CUDA} on CUDA; ours)")


def localization_settings(args: argparse.Namespace, device_type: str = "cpu"):
    """Script 3's ``LocalizationSettings`` from its flags (``device_type``: 'cpu' or 'cuda')."""
    from utils.methods.nemo import localization

    if args.memorization_threshold is not None:
        args.pairwise_ssim_threshold = args.ssim_threshold_initial_selection = args.memorization_threshold
        args.ssim_threshold_refinement = args.memorization_threshold
    if args.smoke:
        args.samples_per_prompt, args.pairwise_ssim_threshold = defaults.SMOKE_SAMPLES_PER_PROMPT, defaults.SMOKE_REJECT_ALL
        args.ssim_threshold_initial_selection = defaults.SMOKE_ACCEPT_ALL
        args.ssim_threshold_refinement = defaults.SMOKE_REJECT_ALL
        args.initial_theta = args.min_theta = defaults.SMOKE_THETA
        args.initial_k, args.no_theta, args.no_top_k = defaults.SMOKE_K, False, False
        args.batch_candidates, args.early_decisions = 0, True
    schedule = localization.SelectionSchedule(args.initial_theta, args.theta_reduction_per_step, args.min_theta,
                                              args.initial_k, not args.no_theta, not args.no_top_k)
    return localization.LocalizationSettings(args.seed, args.samples_per_prompt, args.pairwise_ssim_threshold,
                                             args.ssim_threshold_initial_selection, args.ssim_threshold_refinement,
                                             schedule, args.batch_candidates, args.early_decisions,
                                             args.seeds_per_call or (defaults.SEEDS_PER_CALL_CUDA if device_type == "cuda"
                                                                     else defaults.SEEDS_PER_CALL_CPU))


def add_sscd_model_arg(group) -> None:
    """--sscd-model: a checkpoint name (its file in weights/, fetched by 0_fetch_assets.py) or a TorchScript path."""
    group.add_argument("--sscd-model", default=defaults.SSCD_MODEL,
                       help=f"SSCD checkpoint: {' or '.join(defaults.SSCD_CHECKPOINTS)} (weights/, fetched by "
                            "0_fetch_assets.py; the first is NeMo's, the second Wen et al.'s) or a TorchScript file")


def add_replication_args(parser: argparse.ArgumentParser) -> None:
    """The replication measure of the Dori attack (script 8, experiments.locality triggers)."""
    group = parser.add_argument_group("replication")
    group.add_argument("--similarity", choices=("sscd", "pixel_ssim"), default="sscd",
                       help="sscd: the paper's; pixel_ssim: the weight-free stand-in of the test bed")
    add_sscd_model_arg(group)
    group.add_argument("--replication_threshold", type=float, default=None,
                       help=f"similarity above which an image replicates (default: {defaults.SSCD_REPLICATION_THRESHOLD}"
                            f" for SSCD, the Dori paper's; {defaults.PIXEL_REPLICATION_THRESHOLD} for pixel SSIM, ours)")


def replication_threshold(args: argparse.Namespace) -> float:
    """--replication_threshold, else the default of the chosen --similarity."""
    if args.replication_threshold is not None:
        return args.replication_threshold
    if args.similarity == "sscd":
        return defaults.SSCD_REPLICATION_THRESHOLD
    return defaults.PIXEL_REPLICATION_THRESHOLD


def versioned_path(path: str, version: str) -> str:
    """``results/x.csv`` -> ``results/x_v1_4.csv`` for a version alias (the authors' naming);
    other model sources leave the path as given."""
    if version not in defaults.MODEL_VERSIONS:
        return path
    stem, dot, extension = path.rpartition(".")
    return f"{stem}_{version.replace('-', '_')}.{extension}" if dot else f"{path}_{version.replace('-', '_')}"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Flags that may change between a run and its continuation without changing its results
# (batch sizes: how many prompts share a call, not what each image or row is; a script whose
# batch size does change its results records it itself; the early-decision switches).
NON_RESULT_FLAGS = ("resume", "overwrite", "limit", "log_level", "device", "batch_candidates", "batch_size",
                    "early_decisions", "seeds_per_call", "parallel_prompts")


def file_digest(path: str) -> str:
    """sha256 of a file's bytes: an input that changes under the same name changes the settings."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_settings(args: argparse.Namespace, inputs: tuple[str, ...] = (), **extra) -> dict:
    """The settings an output records: every flag but ``NON_RESULT_FLAGS``, the sha256 of the
    input files named by the flags ``inputs`` (``<flag>_sha256``), and ``extra``."""
    settings = {k: v for k, v in vars(args).items() if k not in NON_RESULT_FLAGS}
    for flag in inputs:
        path = getattr(args, flag)
        if path and os.path.isfile(path):
            settings[f"{flag}_sha256"] = file_digest(path)
    settings.update(extra)
    return dict(sorted(settings.items()))


def pending(shard, total: int, done: set[int], limit: int | None) -> list[int]:
    """This process's prompt indices among the first ``limit`` that are not ``done``."""
    return [i for i in shard.indices(total, limit) if i not in done]


def run(main) -> None:
    """Run a script's ``main``; a bad input (ValueError) ends it with a one-line message."""
    try:
        main()
    except ValueError as error:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {error}")


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the flags and configure logging once (--log_level)."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    return args
