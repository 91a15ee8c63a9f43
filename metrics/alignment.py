"""A_CLIP: cosine similarity of CLIP ViT-B/32 image and caption embeddings (SPEC §6).

Per prompt the median over its images; then the median ± MAD over prompts, overall and per
memorization type. Captions come from the prompt file, by the images' prompt index.
"""

from __future__ import annotations

import logging

from metrics import cli
from metrics.core import alignment_score
from metrics.embedders import CLIPEmbedder, embed_files
from utils.cli import parse, parser_for, run
from utils.images import generated_images
from utils.models import resolve_device

logger = logging.getLogger(__name__)
JSON_NAME = "alignment.json"


def prompt_alignment(embedder, images: dict[int, list[str]], captions: dict[int, str]) -> dict[int, dict[str, float]]:
    """Per prompt the median image-caption similarity; ``embedder`` embeds images (a list of
    PIL images -> [n, d]) and has ``embed_texts`` (a list of captions -> [n, d])."""
    return cli.per_prompt_scores(images, lambda prompt, paths: dict(median=alignment_score(
        embedder.embed_texts([captions[prompt]])[0], embed_files(embedder, paths))))


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    parser.add_argument("-i", "--images", default="generated_images", help="generated images (img_PPPP_SS.jpg)")
    cli.add_prompt_args(parser, required=True)
    cli.add_clip_args(parser)
    cli.add_device_args(parser)
    cli.add_output_args(parser, f"<images>/{JSON_NAME}")
    args = parse(parser, argv)

    images = generated_images(args.images)
    frame = cli.prompt_rows(args.prompts, list(images))
    types = cli.types_of(frame, list(images), args.prompts)
    embedder = CLIPEmbedder(args.clip_model, resolve_device(args.device))
    per_prompt = prompt_alignment(embedder, images, {prompt: frame["Caption"][prompt] for prompt in images})
    return cli.report(f"A_CLIP ({args.clip_model}), {len(images)} prompts", per_prompt, types,
                      cli.default_output(args, JSON_NAME), metric="alignment", clip_model=args.clip_model,
                      images=args.images, prompts=args.prompts)


if __name__ == "__main__":
    run(main)
