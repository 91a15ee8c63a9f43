"""SSCD_Orig: similarity of each generated image to the prompt's original training image (SPEC §6).

Per prompt the maximum and the median over its generations; then the median ± MAD over
prompts, overall and per memorization type. Prompts without an original image are skipped
and counted. Originals are named by prompt row: 0001.png or 0001_anything.jpg.
"""

from __future__ import annotations

import logging

from metrics import cli
from metrics.core import sscd_orig_scores
from metrics.embedders import embed_files
from utils.cli import parse, parser_for, run
from utils.images import generated_images, original_images

logger = logging.getLogger(__name__)
JSON_NAME = "sscd_orig.json"


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    parser.add_argument("-i", "--images", default="generated_images", help="generated images (img_PPPP_SS.jpg)")
    parser.add_argument("-r", "--originals", required=True, help="original training images, one per prompt")
    cli.add_prompt_args(parser)
    cli.add_embedder_args(parser)
    cli.add_output_args(parser, f"<images>/{JSON_NAME}")
    args = parse(parser, argv)

    images = generated_images(args.images)
    originals = original_images(args.originals)
    missing = [prompt for prompt in images if prompt not in originals]
    if missing:
        logger.warning("%d of %d prompts have no original image in %s and are skipped: %s",
                       len(missing), len(images), args.originals, missing)
    scored = {prompt: paths for prompt, paths in images.items() if prompt in originals}
    types = cli.prompt_types(args.prompts, list(images))
    embedder = cli.embedder_from(args)
    per_prompt = cli.per_prompt_scores(scored, lambda prompt, paths: sscd_orig_scores(
        embed_files(embedder, [originals[prompt]])[0], embed_files(embedder, paths)))
    title = (f"SSCD_Orig ({embedder.label} embedder), {len(scored)} prompts, "
             f"{len(missing)} without an original image skipped")
    return cli.report(title, per_prompt, types, cli.default_output(args, JSON_NAME), metric="sscd_orig",
                      embedder=embedder.label, images=args.images, originals=args.originals,
                      skipped_prompts=missing)


if __name__ == "__main__":
    run(main)
