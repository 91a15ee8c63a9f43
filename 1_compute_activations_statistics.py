"""Script 1: per-neuron mean and std of the value-layer activations over hold-out prompts.

Activations come from the text embedding alone (SPEC §2): no U-Net pass is made.
"""

import logging

from utils import cli, defaults

logger = logging.getLogger("1_compute_activations_statistics")


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--prompts", default="prompts/additional_laion_prompts.csv",
                        help="hold-out prompt file (';'-separated, column Caption)")
    parser.add_argument("--output", default="statistics/statistics_additional_laion_prompts.pt",
                        help="statistics file to write; a version alias is appended (_v1_4), as the authors do")
    parser.add_argument("--batch_size", type=cli.positive_int, default=defaults.STATISTICS_BATCH_SIZE,
                        help="prompts per text-encoder batch")
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False)
    args = cli.parse(parser, argv)

    import torch

    from utils.distributed import Shard
    from utils.files import read_prompts
    from utils.layers import value_layers
    from utils.models import load_pipeline_from_args
    from utils.nemo.statistics import activation_sums, save_statistics

    prompts = read_prompts(args.prompts)["Caption"].tolist()
    pipe = load_pipeline_from_args(args)
    layers = value_layers(pipe.unet)
    shard = Shard.from_env()
    output = cli.versioned_path(args.output, args.version)
    sums = activation_sums(pipe, layers, [prompts[i] for i in shard.indices(len(prompts), args.limit)],
                           args.batch_size)

    def merge(parts: list[str], path: str) -> None:
        total = sum((torch.load(p, weights_only=False) for p in parts[1:]), torch.load(parts[0], weights_only=False))
        save_statistics(total.statistics(list(layers), args.version), path)

    if shard.world_size == 1:
        save_statistics(sums.statistics(list(layers), args.version), output)
    else:
        torch.save(sums, shard.part(output))  # partial sums; the last process merges them
        if not shard.finish(output, merge):
            return
    logger.info("statistics of %d prompts over %d layers written to %s", len(prompts[: args.limit]), len(layers), output)


if __name__ == "__main__":
    cli.run(main)
