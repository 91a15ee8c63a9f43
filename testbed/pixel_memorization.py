"""Does the test bed copy its training images?

For every memorized prompt: the pixel SSIM of each generated image to its training image
(median over seeds). For held-out ordinary prompts: the SSIM between the images of
different seeds (median over pairs), which is high only when every seed gives one image.
Generation as in script 4 (50 DDIM steps, guidance 7, 10 seeds by default).

    python -m testbed.pixel_memorization [--steps 50] [--num_samples 10]
"""

from __future__ import annotations

import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import to_tensor
from tqdm import tqdm

import testbed
from metrics.core import median
from metrics.pixel_ssim import ssim_to_original
from utils import cli
from utils.files import read_prompts
from utils.generation import (GENERATION_STEPS, NUM_SAMPLES, caption_condition, generate_prompt_images,
                              generation_latents)
from utils.images import original_images
from utils.models import load_pipeline, resolve_device


def ssim_between_seeds(generated: list[Image.Image]) -> torch.Tensor:
    """Pixel SSIM of every pair of generated images: [n * (n - 1) / 2]."""
    images = torch.stack([to_tensor(image.convert("RGB")) for image in generated])  # [n, 3, H, W]
    n = len(images)
    rows, cols = torch.triu_indices(n, n, offset=1)
    return structural_similarity_index_measure(images[rows], images[cols], data_range=1.0, reduction="none")


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="diffusers folder of the test bed")
    parser.add_argument("--steps", type=int, default=GENERATION_STEPS, help="DDIM steps (paper: 50)")
    parser.add_argument("--num_samples", type=int, default=NUM_SAMPLES, help="seeds per prompt (paper: 10)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    pipe = load_pipeline(args.model, resolve_device(args.device))
    pipe.set_progress_bar_config(disable=True)
    latents = generation_latents(pipe.unet, num_samples=args.num_samples)  # [n, 4, h, w], script 4's seed
    generate = lambda caption: generate_prompt_images(pipe, caption_condition(pipe, caption), latents,
                                                      steps=args.steps)
    memorized = read_prompts(testbed.MEMORIZED_PROMPTS)
    originals = original_images(testbed.ORIGINALS_DIR)
    figures = {"VM": [], "TM": [], "held-out": []}
    seeds = {"VM": [], "TM": [], "held-out": []}
    for i in tqdm(range(len(memorized)), desc="memorized", unit="prompt"):
        images = generate(memorized["Caption"][i])
        figures[memorized["type"][i]].append(median(ssim_to_original(Image.open(originals[i]), images)))
        seeds[memorized["type"][i]].append(median(ssim_between_seeds(images)))
    for caption in tqdm(read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"], desc="held-out", unit="prompt"):
        seeds["held-out"].append(median(ssim_between_seeds(generate(caption))))
    report = {}
    for kind in figures:
        report[kind] = dict(ssim_to_original=median(torch.tensor(figures[kind])) if figures[kind] else None,
                            ssim_between_seeds=median(torch.tensor(seeds[kind])), prompts=len(seeds[kind]),
                            per_prompt=[round(v, 3) for v in (figures[kind] or seeds[kind])])
        original = f"{report[kind]['ssim_to_original']:.3f}" if figures[kind] else "-"
        print(f"{kind:<9} ({len(seeds[kind])} prompts): median SSIM to the training image {original}, "
              f"median SSIM between seeds {report[kind]['ssim_between_seeds']:.3f}")
        print(f"          per prompt: {report[kind]['per_prompt']}")
    return report


if __name__ == "__main__":
    cli.run(main)
