"""Script 7: Wanda pruning of memorized weights (Chavhan et al., §4) into a new model folder.

Takes a memorized prompt file, draws the prompt set P (a seeded random subset of its rows),
collects the feed-forward output layers' input norms over P and over the empty prompt at the
first U-Net calls, zeroes the memorized weights (per row the top s% by |W| * ||H|| that beat
the empty prompt's score, united over the calls) and writes a diffusers folder that
StableDiffusionPipeline.from_pretrained (and every script here, -v FOLDER) loads like any
model, with wanda_masks.pt (the weights, per layer and per call) and wanda.json (P, the
pruned fraction per layer, the cost) beside it. Evaluate it on the prompts not in P.
"""

from experiments import prune
from utils import cli


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    prune.add_args(parser)
    return prune.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
