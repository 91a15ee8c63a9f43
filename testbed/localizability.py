"""Can any neuron set bring the test bed's memorized prompts below tau_mem?

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

And what the data allow (``ideal_noise_differences``): the as-unconditional bound of the ideal
denoiser, the one that learned the training data exactly (Monte Carlo posterior means over
samples of the caption's images and of the whole training mixture). Where it is at or below
tau_mem but the trained model's bound is not, the gap is the model's, not the data's.

    python -m testbed.localizability
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import testbed
from testbed import synthetic_data as data
from testbed.train_testbed import SEED, Sampler, to_tensor
from utils import cli
from utils.diffusion import initial_latents, latent_shape, schedule_timestep
from utils.files import read_prompts, read_threshold
from utils.images import original_images
from utils.layers import layer_widths, value_layers
from utils.methods.nemo import NUM_INFERENCE_STEPS, TIMESTEP_INDEX
from utils.methods.nemo.localization import LocalizationConfig
from utils.methods.nemo.noise import normalize_maps, prompt_noise_difference
from utils.methods.nemo.score import blocked_scores, pairwise_max_scores
from utils.models import load_pipeline, resolve_device

# Monte Carlo samples of the training mixture (and of each TM template) for the ideal denoiser;
# 4096 keep the posterior means' effective sample size in the tens on the test bed's seeds.
IDEAL_SAMPLES = 4096
IDEAL_TEMPLATE_SAMPLES = 512
IDEAL_DRAW_SEED = 7  # a stream of draws of the training data's own, apart from the training runs'


def first_step_coefficients(pipe) -> tuple[float, float, float]:
    """(a, c, k): alpha_bar at the detection timestep and the coefficients of an exact denoiser's
    first-step noise difference k x_T - c x0 (c = sqrt(a / (1 - a)), k = 1 / sqrt(1 - a) - 1)."""
    a = pipe.scheduler.alphas_cumprod[schedule_timestep(pipe.scheduler, NUM_INFERENCE_STEPS, TIMESTEP_INDEX).cpu()].item()
    return a, (a / (1 - a)) ** 0.5, 1 / (1 - a) ** 0.5 - 1


@torch.no_grad()
def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images [m, 3, H, W] in [-1, 1] -> scaled latents [m, 4, h, w] (float32, CPU)."""
    return torch.cat([vae.encode(batch.to(vae.device, vae.dtype)).latent_dist.mode().float().cpu()
                      for batch in images.split(256)]) * vae.config.scaling_factor


def ideal_noise_differences(pipe, samples: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """First-step noise differences k x_T - c E[x0 | x_T] of the ideal denoiser of the distribution
    that ``samples`` [m, 4, h, w] (latents x0) are drawn from: latents x_T [n, 4, h, w] -> [n, 4, h, w].

    The posterior mean weighs each sample by its likelihood N(x_T; sqrt(a) x0, (1 - a) I).
    """
    a, c, k = first_step_coefficients(pipe)
    x0, x_t = samples.flatten(1).double(), latents.flatten(1).double()
    log_weights = (a ** 0.5 * x_t @ x0.T - a / 2 * (x0 ** 2).sum(dim=1)) / (1 - a)  # [n, m]
    mean = torch.softmax(log_weights, dim=1) @ x0
    return (k * x_t - c * mean).view_as(latents).float()


def ideal_samples(pipe, url: str, original: str, rng: np.random.Generator) -> torch.Tensor:
    """Latents [m, 4, h, w] of a memorized prompt's images: its one training image (VM) or
    samples of its template (``testbed:tm/<template>``)."""
    if url.startswith("testbed:tm/"):
        template = int(url.rsplit("/", 1)[1])
        images = np.stack([data.render_tm(template, rng, SEED) for _ in range(IDEAL_TEMPLATE_SAMPLES)])
    else:
        images = np.array(Image.open(original).convert("RGB"))[None]
    return encode(pipe.vae, to_tensor(images))


def ideal_unconditional(pipe, latents: torch.Tensor, samples: int = IDEAL_SAMPLES) -> torch.Tensor:
    """The ideal denoiser's noise differences [n, 4, h, w] for the empty prompt: posterior means
    over ``samples`` draws of the whole training mixture."""
    sampler = Sampler(SEED, IDEAL_DRAW_SEED)
    images = torch.cat([sampler.draw(256)[0] for _ in range(samples // 256)])
    return ideal_noise_differences(pipe, encode(pipe.vae, images), latents)


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
def image_share(pipe, delta: torch.Tensor, x0: torch.Tensor, latents: torch.Tensor,
                empty: torch.Tensor, ideal_empty: torch.Tensor) -> dict[str, float]:
    """How much of a VM prompt's raw noise difference ``delta`` [n, 4, h, w] is its training
    image, whose latent is ``x0`` [1, 4, h, w].

    A denoiser that memorized x0 predicts delta = k x_T - c x0 with c = sqrt(a / (1 - a)) and
    k = 1 / sqrt(1 - a) - 1 (a: alpha_bar at the detection timestep). Per-map means are removed
    (min-max normalization ignores them). Returns the image term |c x0|, the median over seeds
    of the error |delta - (k x_T - c x0)|, and the median cosines of the error with ``empty``
    [n, 4, h, w], the empty prompt's raw noise differences on ``latents`` [n, 4, h, w], and with
    ``ideal_empty`` [n, 4, h, w], the ideal denoiser's (high if the error is a hedge between
    training images that the seed favours, as the ideal empty prompt's is).
    """
    _, c, k = first_step_coefficients(pipe)
    centred = lambda x: (x - x.mean(dim=(-2, -1), keepdim=True)).flatten(1)
    error = centred(delta - (k * latents - c * x0))  # [n, 4 * h * w]
    return dict(image=centred(c * x0).norm().item(), error=error.norm(dim=1).median().item(),
                error_vs_empty=F.cosine_similarity(error, centred(empty)).median().item(),
                error_vs_ideal_empty=F.cosine_similarity(error, centred(ideal_empty)).median().item())


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="diffusers folder of the test bed")
    parser.add_argument("--prompts", default=testbed.MEMORIZED_PROMPTS, help="memorized prompts")
    parser.add_argument("--threshold_file", default=os.path.join(testbed.TESTBED_DIR, "threshold.json"),
                        help="script 2's threshold json (tau_mem)")
    parser.add_argument("--originals", default=testbed.ORIGINALS_DIR,
                        help="training images of --prompts, {row:04d}.png (for the VM image share)")
    parser.add_argument("--ideal_samples", type=int, default=IDEAL_SAMPLES,
                        help="samples of the training mixture for the ideal denoiser's empty prompt (the default "
                             "keeps the posterior means' effective sample size in the tens on the test bed)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    threshold = read_threshold(args.threshold_file)
    pipe = load_pipeline(args.model, resolve_device(args.device))
    layers = value_layers(pipe.unet)
    settings = LocalizationConfig()
    latents = initial_latents(settings.seed, settings.samples_per_prompt, latent_shape(pipe.unet))  # [n, 4, h, w]
    empty = prompt_noise_difference(pipe, layers, "", normalized=False)(latents)[0]  # [n, 4, h, w]
    unconditional = normalize_maps(empty)
    prompts = read_prompts(args.prompts)
    originals = original_images(args.originals)
    ideal_empty = ideal_unconditional(pipe, latents, args.ideal_samples)  # [n, 4, h, w]
    ideal_unconditional_maps = normalize_maps(ideal_empty)
    rng = np.random.default_rng(IDEAL_DRAW_SEED)
    rows, deltas, samples, ideal_bounds = {}, {}, {}, {}
    print(f"tau_mem {threshold:.3f}; kernel {testbed.SSIM_KERNEL_SIZE}; {settings.samples_per_prompt} seeds")
    print(f"{'prompt':<34}{'score':>8}{'all blocked':>13}{'as unconditional':>18}{'ideal denoiser':>16}")
    for row, (caption, kind) in enumerate(zip(prompts["Caption"], prompts.get("type", [""] * len(prompts)))):
        deltas[caption] = noise_differences(pipe, layers, caption, latents)
        rows[caption] = r = dict(type=kind, **bounds(normalize_maps(deltas[caption]), unconditional, threshold,
                                                     testbed.SSIM_KERNEL_SIZE))
        # the ideal denoiser's as-unconditional bound: its blocked noise differences are its empty prompt's
        url = prompts["URL"][row]
        if url not in ideal_bounds:  # one per training image or template
            samples[url] = ideal_samples(pipe, url, originals[row], rng)  # [m, 4, h, w]
            ideal = normalize_maps(ideal_noise_differences(pipe, samples[url], latents))
            ideal_bounds[url] = bounds(torch.stack([ideal, ideal_unconditional_maps]), ideal_unconditional_maps,
                                       threshold, testbed.SSIM_KERNEL_SIZE)["as_unconditional"]
        r["ideal"] = ideal_bounds[url]
        print(f"{caption[:33]:<34}{r['score']:>8.3f}{r['all_blocked']:>13.3f}{r['as_unconditional']:>18.3f}"
              f"{r['ideal']:>16.3f}")
    for bound in ("all_blocked", "as_unconditional", "ideal"):
        below = sum(r[bound] <= threshold for r in rows.values())
        name = "ideal denoiser, as unconditional" if bound == "ideal" else bound.replace("_", " ")
        print(f"{name}: at or below tau_mem for {below} of {len(rows)} prompts")
    print(f"\nVM prompts: image term |c x0| against the U-Net's error (median over seeds)\n"
          f"{'':<50}{'cosine of the error with the empty prompt':>42}\n"
          f"{'prompt':<34}{'image':>8}{'error':>8}{'model':>24}{'ideal denoiser':>18}")
    for row, caption in enumerate(prompts["Caption"]):
        r = rows[caption]
        if r["type"] == "VM":
            r.update(image_share(pipe, deltas[caption][0], samples[prompts["URL"][row]], latents, empty, ideal_empty))
            print(f"{caption[:33]:<34}{r['image']:>8.2f}{r['error']:>8.2f}{r['error_vs_empty']:>24.2f}"
                  f"{r['error_vs_ideal_empty']:>18.2f}")
    return rows


if __name__ == "__main__":
    cli.run(main)
