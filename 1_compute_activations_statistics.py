"""Script 1: per-neuron mean and std of the value-layer activations over hold-out prompts.

Activations come from the text embedding alone (SPEC §2): no U-Net pass is made.
"""

from experiments import statistics
from utils import cli


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    statistics.add_args(parser)
    return statistics.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
