"""Script 3: NeMo localization of the neurons behind each memorized prompt (SPEC §4).

Per prompt: seeds whose noise differences look memorized, the initial selection by
activation outliers, then layer and neuron refinement. One row per prompt in the authors'
format (Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM) plus its cost,
flushed as the prompt finishes; --resume continues a killed run.
"""

from experiments import localize
from utils import cli


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    localize.add_args(parser)
    return localize.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
