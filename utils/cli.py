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
                    "early_decisions", "seeds_per_call", "parallel_prompts", "checkpoint_every")


def file_digest(path: str) -> str:
    """sha256 of a file's bytes: an input that changes under the same name changes the settings."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(args: argparse.Namespace, inputs: tuple[str, ...] = (), **extra) -> dict:
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


def parse(parser: argparse.ArgumentParser, argv=None, check=None) -> argparse.Namespace:
    """Parse the flags and configure logging once (--log_level); ``check(args)`` raises a
    ValueError for flags that do not go together, which ends the command as a usage error."""
    args = parser.parse_args(argv)
    if check:
        try:
            check(args)
        except ValueError as error:
            parser.error(str(error))
    setup_logging(getattr(args, "log_level", "INFO"))
    return args


def step_args(add_args, argv: list[str] = (), **values) -> argparse.Namespace:
    """The flags a step's parser (``add_args``) gives for ``argv`` (a user's flags as text;
    none: its defaults), with ``values`` (flag dests) in their place: how library code runs a
    step without building a command line."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    for action in parser._actions:  # a required flag is required of ``values`` instead
        if action.required and action.dest in values:
            action.required = False
        elif action.required and not any(flag in argv for flag in action.option_strings):
            raise ValueError(f"this step needs {action.dest!r}")
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ValueError(f"this step takes no {' '.join(unknown)}")
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for this step; it takes {sorted(vars(args))}")
    vars(args).update(values)
    return args


def run_step(step, argv: list[str] = (), **values):
    """A step module (its ``add_args`` and ``run``, e.g. ``experiments.generate``) run with its
    defaults, a user's flags ``argv`` and ``values`` (flag dests)."""
    return step.run(step_args(step.add_args, argv, **values))
