"""Script 8: is the memorization gone, or only hidden? The Dori attack (Kowalczuk et al.).

For each memorized prompt whose training image is known, optimizes a text embedding, from the
prompt's own, so that the given model denoises towards that image, then generates from it
(script 4's seeds) and measures replication: the maximum over the images of SSCD (or, without
SSCD weights, pixel SSIM) to the training image, above the replication threshold. The model is
any diffusers folder (the original, Wanda's or script 5's pruned model, an adversarially
fine-tuned one), optionally with each prompt's NeMo neurons deactivated (--neurons_from).
One row per prompt, flushed as it finishes (--resume continues); the attack success rate per
memorization type is printed and written to attack_summary.json.
"""

from experiments import attack
from utils import cli


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    attack.add_args(parser)
    return attack.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
