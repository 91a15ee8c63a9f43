"""Script 1's step: NeMo's activation statistics of the value layers over a prompt file
(SPEC §2), from the text encoder alone."""

from __future__ import annotations

import logging
import os

from utils import cli
from utils.methods import nemo

logger = logging.getLogger("1_compute_activations_statistics")


def add_args(parser) -> None:
    parser.add_argument("--prompts", default="prompts/additional_laion_prompts.csv",
                        help="authors': hold-out prompt file (';'-separated, column Caption)")
    parser.add_argument("--output", default="statistics/statistics_additional_laion_prompts.pt",
                        help="authors': statistics file to write (its folder is created); a version alias is appended "
                             "(_v1_4), as the authors do")
    parser.add_argument("--batch_size", type=cli.positive_int, default=nemo.STATISTICS_BATCH_SIZE,
                        help="ours: prompts per text-encoder batch (the sums do not depend on it)")
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False, what="hold-out prompts")


def cost(args):
    """Script 1's work for its flags (a ``utils.cost.Work``): nothing when --output exists; else
    the text encoder over every prompt up to --limit."""
    from utils.cost import Work
    from utils.files import read_prompts

    if os.path.exists(cli.versioned_path(args.output, args.version)):
        return Work()
    prompts = len(read_prompts(args.prompts)[: args.limit])
    return Work(prompts, texts=prompts, loads=1)


def run(args) -> None:
    output = cli.versioned_path(args.output, args.version)

    from utils.files import read_prompts
    from utils.outputs import claim_output

    prompts = read_prompts(args.prompts)["Caption"].tolist()
    # the folder is made and the settings recorded before any work; other settings are refused
    recorded = cli.run_record(args, inputs=("prompts",), limit=args.limit)
    if claim_output(output, recorded, args.overwrite) and os.path.exists(output):
        logger.info("%s is complete with the same settings; nothing to do", output)
        return

    import torch

    from utils.distributed import Shard
    from utils.layers import value_layers
    from utils.methods.nemo.statistics import activation_sums, save_statistics
    from utils.models import load_pipeline_from_args
    from utils.outputs import save_torch

    pipe = load_pipeline_from_args(args)
    layers = value_layers(pipe.unet)
    shard = Shard.from_env()
    sums = activation_sums(pipe, layers, [prompts[i] for i in shard.indices(len(prompts), args.limit)],
                           args.batch_size)

    def merge(parts: list[str], path: str) -> None:
        total = sum((torch.load(p, weights_only=False) for p in parts[1:]), torch.load(parts[0], weights_only=False))
        save_statistics(total.statistics(list(layers), args.version), path)

    if shard.world_size == 1:
        save_statistics(sums.statistics(list(layers), args.version), output)
    else:
        save_torch(shard.part(output), sums)  # partial sums; the last process merges them
        if not shard.finish(output, merge):
            return
    logger.info("statistics of %d prompts over %d layers written to %s", len(prompts[: args.limit]), len(layers), output)
