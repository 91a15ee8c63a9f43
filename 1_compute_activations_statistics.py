"""Script 1: per-neuron mean and std of the value-layer activations over hold-out prompts.

Activations come from the text embedding alone (SPEC §2): no U-Net pass is made.
"""

import logging

from utils import cli
from utils.files import read_prompts
from utils.layers import value_layers
from utils.models import load_pipeline, resolve_device
from utils.statistics import STATISTICS_BATCH_SIZE, compute_statistics, save_statistics

logger = logging.getLogger("1_compute_activations_statistics")


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--prompts", default="prompts/additional_laion_prompts.csv",
                        help="hold-out prompt file (';'-separated, column Caption)")
    parser.add_argument("--output", default="statistics/statistics_additional_laion_prompts.pt",
                        help="statistics file to write; a version alias is appended (_v1_4), as the authors do")
    parser.add_argument("--batch_size", type=int, default=STATISTICS_BATCH_SIZE, help="prompts per text-encoder batch")
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False)
    args = cli.parse(parser, argv)

    prompts = read_prompts(args.prompts)["Caption"].tolist()[: args.limit]
    pipe = load_pipeline(args.version, resolve_device(args.device))
    layers = value_layers(pipe.unet)
    stats = compute_statistics(pipe, layers, prompts, args.version, args.batch_size)
    output = cli.versioned_path(args.output, args.version)
    save_statistics(stats, output)
    logger.info("statistics of %d prompts over %d layers written to %s", len(prompts), len(layers), output)


if __name__ == "__main__":
    cli.run(main)
