"""Can any neuron set bring the test bed's memorized prompts below tau_mem? (issue 3, point 3)

NeMo accepts a set when the blocked score (SPEC §4.1: MS-SSIM between a kept seed's
unblocked and blocked noise differences, max over kept seeds) is at or below tau_mem. Two
bounds on what any set can reach, per memorized prompt, on script 3's seeds:
* all blocked: every value neuron deactivated;
* as unconditional: the blocked noise differences replaced by those of the empty prompt,
  i.e. a set that removed everything the caption adds.
A model on which even these extreme sets stay above tau_mem is unlikely to meet point 3,
whatever the localization does. Quick (one U-Net call per prompt and bound): run it on a retrained
test bed before the full Table 1.

For the VM prompts it also measures why (``image_share``): how large the training image's term
in the raw noise difference is against the U-Net's error, and how much of that error every
caption shares on the seed (a shared error keeps same-seed scores, and so the bounds, high).

    python -m testbed.localizability
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import testbed
from metrics.images import original_images
from utils import cli
from utils.files import read_prompts, read_threshold
from utils.layers import layer_widths, value_layers
from utils.localization import LocalizationSettings
from utils.models import load_pipeline, resolve_device
from utils.noise import detection_timestep, initial_latents, latent_shape, normalize_maps, prompt_noise_difference
from utils.score import blocked_scores, pairwise_max_scores


def noise_differences(pipe, layers, caption: str, latents: torch.Tensor) -> torch.Tensor:
    """Raw eps - x_T of one prompt with no neuron and with every value neuron deactivated:
    latents [n, 4, h, w] -> [2, n, 4, h, w] (one U-Net call)."""
    every_neuron = [list(range(width)) for width in layer_widths(layers)]
    return prompt_noise_difference(pipe, layers, caption, normalized=False)(latents, [[[] for _ in layers], every_neuron])


def bounds(deltas: torch.Tensor, unconditional: torch.Tensor, threshold: float, kernel_size: int) -> dict[str, float]:
    """Memorization score and the two bounds of one prompt (see module docstring).

    deltas: the prompt's normalized noise differences [2, n, 4, h, w] (unblocked, all blocked);
    unconditional: the empty prompt's [n, 4, h, w] on the same latents.
    """
    unblocked, blocked = deltas
    per_sample = pairwise_max_scores(unblocked, kernel_size)
    keep = per_sample > threshold
    if not keep.any():
        return dict(score=per_sample.max().item(), all_blocked=float("nan"), as_unconditional=float("nan"))
    return dict(score=per_sample.max().item(),
                all_blocked=blocked_scores(unblocked[keep], blocked[keep][None], kernel_size).item(),
                as_unconditional=blocked_scores(unblocked[keep], unconditional[keep][None], kernel_size).item())


@torch.no_grad()
def image_share(pipe, delta: torch.Tensor, original: Image.Image, latents: torch.Tensor,
                empty: torch.Tensor) -> dict[str, float]:
    """How much of a VM prompt's raw noise difference ``delta`` [n, 4, h, w] is its training image x0.

    A denoiser that memorized x0 predicts delta = k x_T - c x0 with c = sqrt(a / (1 - a)) and
    k = 1 / sqrt(1 - a) - 1 (a: alpha_bar at the detection timestep). Per-map means are removed
    (min-max normalization ignores them). Returns the image term |c x0|, the median over seeds
    of the error |delta - (k x_T - c x0)|, and the median cosine of the error with ``empty``
    [n, 4, h, w], the empty prompt's raw noise differences on ``latents`` [n, 4, h, w].
    """
    image = torch.from_numpy(np.asarray(original.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    vae = pipe.vae
    x0 = vae.encode(image.to(vae.device, vae.dtype)).latent_dist.mode().float().cpu() * vae.config.scaling_factor
    a = pipe.scheduler.alphas_cumprod[detection_timestep(pipe.scheduler).cpu()].item()
    c, k = (a / (1 - a)) ** 0.5, 1 / (1 - a) ** 0.5 - 1
    centred = lambda x: (x - x.mean(dim=(-2, -1), keepdim=True)).flatten(1)
    error = centred(delta - (k * latents - c * x0))  # [n, 4 * h * w]
    return dict(image=centred(c * x0).norm().item(), error=error.norm(dim=1).median().item(),
                error_vs_empty=F.cosine_similarity(error, centred(empty)).median().item())


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="diffusers folder of the test bed")
    parser.add_argument("--prompts", default=testbed.MEMORIZED_PROMPTS, help="memorized prompts")
    parser.add_argument("--threshold_file", default=os.path.join(testbed.TESTBED_DIR, "threshold.json"),
                        help="script 2's threshold json (tau_mem)")
    parser.add_argument("--originals", default=testbed.ORIGINALS_DIR,
                        help="training images of --prompts, {row:04d}.png (for the VM image share)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    threshold = read_threshold(args.threshold_file)
    pipe = load_pipeline(args.model, resolve_device(args.device))
    layers = value_layers(pipe.unet)
    settings = LocalizationSettings()
    latents = initial_latents(settings.seed, settings.samples_per_prompt, latent_shape(pipe.unet))  # [n, 4, h, w]
    empty = prompt_noise_difference(pipe, layers, "", normalized=False)(latents)[0]  # [n, 4, h, w]
    unconditional = normalize_maps(empty)
    prompts = read_prompts(args.prompts)
    originals = original_images(args.originals)
    rows, deltas = {}, {}
    print(f"tau_mem {threshold:.3f}; kernel {testbed.SSIM_KERNEL_SIZE}; {settings.samples_per_prompt} seeds")
    print(f"{'prompt':<34}{'score':>8}{'all blocked':>13}{'as unconditional':>18}")
    for caption, kind in zip(prompts["Caption"], prompts.get("type", [""] * len(prompts))):
        deltas[caption] = noise_differences(pipe, layers, caption, latents)
        rows[caption] = dict(type=kind, **bounds(normalize_maps(deltas[caption]), unconditional, threshold,
                                                 testbed.SSIM_KERNEL_SIZE))
        r = rows[caption]
        print(f"{caption[:33]:<34}{r['score']:>8.3f}{r['all_blocked']:>13.3f}{r['as_unconditional']:>18.3f}")
    for bound in ("all_blocked", "as_unconditional"):
        below = sum(r[bound] <= threshold for r in rows.values())
        print(f"{bound.replace('_', ' ')}: at or below tau_mem for {below} of {len(rows)} prompts")
    print(f"\nVM prompts: image term |c x0| against the U-Net's error (median over seeds)\n"
          f"{'prompt':<34}{'image':>8}{'error':>8}{'error vs empty prompt (cosine)':>32}")
    for row, caption in enumerate(prompts["Caption"]):
        r = rows[caption]
        if r["type"] == "VM" and row in originals:
            r.update(image_share(pipe, deltas[caption][0], Image.open(originals[row]), latents, empty))
            print(f"{caption[:33]:<34}{r['image']:>8.2f}{r['error']:>8.2f}{r['error_vs_empty']:>32.2f}")
    return rows


if __name__ == "__main__":
    cli.run(main)
