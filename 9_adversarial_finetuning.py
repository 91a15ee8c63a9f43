"""Script 9: adversarial fine-tuning (Kowalczuk et al., "Finding Dori", §4.4) into a new model folder.

For every epoch and memorized training image, finds an adversarial embedding against the
current model (script 8's attack, from the prompt's own embedding) and updates every U-Net
weight so that this embedding denoises towards a surrogate image instead (what the
NeMo-mitigated model draws for the prompt: its refined neurons off, script 4's first seed),
plus the ordinary denoising loss on other image-caption pairs (--utility_data) to keep the
model's utility. Writes a diffusers folder that every script loads with -v FOLDER, and
finetune.json (settings, losses per update, time) beside it.
"""

from experiments import finetune
from utils import cli


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    finetune.add_args(parser)
    return finetune.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
