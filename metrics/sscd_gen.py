"""SSCD_Gen: similarity of image j generated with deactivation to image j generated without
(same seed) (SPEC §6).

Per prompt the median over its images; then the median ± MAD over prompts, overall and per
memorization type. Both folders must hold the same file names.
"""

from __future__ import annotations

import logging

from metrics import cli
from metrics.core import sscd_gen_score
from metrics.embedders import embed_files
from utils.cli import parse, parser_for, run
from utils.images import paired_images

logger = logging.getLogger(__name__)
JSON_NAME = "sscd_gen.json"


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    parser.add_argument("-i", "--images", default="generated_images", help="images generated with deactivation")
    parser.add_argument("-r", "--reference", required=True, help="images generated without deactivation")
    cli.add_prompt_args(parser)
    cli.add_embedder_args(parser)
    cli.add_output_args(parser, f"<images>/{JSON_NAME}")
    args = parse(parser, argv)

    pairs = paired_images(args.images, args.reference)
    types = cli.prompt_types(args.prompts, list(pairs))
    embedder = cli.embedder_from(args)
    per_prompt = cli.per_prompt_scores(pairs, lambda prompt, paths: dict(median=sscd_gen_score(
        embed_files(embedder, [a for a, _ in paths]), embed_files(embedder, [b for _, b in paths]))))
    return cli.report(f"SSCD_Gen ({embedder.label} embedder), {len(pairs)} prompts", per_prompt, types,
                      cli.default_output(args, JSON_NAME), metric="sscd_gen", embedder=embedder.label,
                      images=args.images, reference=args.reference)


if __name__ == "__main__":
    run(main)
