"""Script 6: the paper's Table 1, every row, on any model (SPEC §6; paper Table 1).

Runs, on a memorized prompt file: NeMo's localization (script 3, resumed), Wanda pruning
(script 7) on a random subset P of the prompts, then script 4 for every setting (all neurons
active, Wen's prompt-embedding adjustment, random neurons, Ren's attention scaling, 1/4/10
random tokens, NeMo, and beyond the paper's table the Wanda-pruned model on the prompts not in
P and on P, and NeMo on that model), optionally each global setting on held-out prompts for a
quality column, optionally both detectors (script 2: NeMo's SSIM score and Wen's noise
magnitude) on the memorized and a non-memorized prompt file, and with --dori adversarial
fine-tuning (script 9) as a row and the Dori attack (script 8) on every mitigation. Each image
is also compared with a whole reference set (nearest copies). Prints and writes the table
(table1.json, table1.md) and PNGs (a grid per memorization type, score histogram, neurons per
layer) into --output; a rerun reuses every finished step.

SD v1.4 with SSCD and CLIP weights (the paper's columns):
    python 6_reproduce_table1.py -d prompts/memorized_laion_prompts.csv --originals original_images \\
        --unmemorized_prompts prompts/unmemorized_laion_prompts.csv --sscd-model sscd_disc_mixup
"""

from experiments import table1
from utils import cli


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    table1.add_args(parser)
    args = cli.parse(parser, argv)
    return table1.run(args, table1.paper_measures(args), f"Table 1 ({args.version})")


if __name__ == "__main__":
    cli.run(main)
