"""D_SSCD (diversity): median pairwise similarity among a prompt's generations (SPEC §6).

45 pairs for 10 images per prompt; then the median ± MAD over prompts, overall and per
memorization type. Lower is more diverse.
"""

from __future__ import annotations

import logging

from metrics import cli
from metrics.core import diversity_score
from metrics.embedders import embed_files
from utils.cli import parse, parser_for, run
from utils.images import generated_images

logger = logging.getLogger(__name__)
JSON_NAME = "diversity.json"


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    parser.add_argument("-i", "--images", default="generated_images", help="generated images (img_PPPP_SS.jpg)")
    cli.add_prompt_args(parser)
    cli.add_embedder_args(parser)
    cli.add_output_args(parser, f"<images>/{JSON_NAME}")
    args = parse(parser, argv)

    images = generated_images(args.images)
    if len(next(iter(images.values()))) < 2:
        raise ValueError(f"diversity needs at least 2 images per prompt; {args.images} has 1")
    types = cli.prompt_types(args.prompts, list(images))
    embedder = cli.embedder_from(args)
    per_prompt = cli.per_prompt_scores(images, lambda prompt, paths: dict(
        median=diversity_score(embed_files(embedder, paths))))
    return cli.report(f"D_SSCD ({embedder.label} embedder), {len(images)} prompts", per_prompt, types,
                      cli.default_output(args, JSON_NAME), metric="diversity", embedder=embedder.label,
                      images=args.images)


if __name__ == "__main__":
    run(main)
