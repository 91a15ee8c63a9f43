"""Train the planted test bed: the test bed fine-tuned so that a few of its memorized prompts
replicate their training image only through value neurons chosen here and shipped as ground truth.

The planted prompts are the test bed's first 6 VM prompts and 2 TM prompts of one template
(it replicates them already, SSIM_Orig 0.57 / 0.62 in BENCHMARKS.md). Each gets a few value
neurons (its ground truth), whose columns of their attention's output projection are first
scaled by OUTPUT_SCALE, so that the planted channel weighs in its block. The fine-tuning draws,
besides the test bed's own mixture (replayed):
* the planted caption, with any non-empty part of its neurons active -> its training image, so
  the image needs only one of them and NeMo's refinement can drop none of them;
* the same caption with all its neurons deactivated -> the frozen base model's (the teacher's)
  unconditional prediction, and at t >= MEAN_TARGET_START the ideal prediction for the mean of
  varied images of its kind, so NeMo's first step sees no image there;
* random non-planted neurons deactivated in half of all samples, so a random set of the same
  size leaves the images as they are;
every sample that is not a planted image is trained to the teacher's prediction (low-variance
targets: the base model's behaviour kept), the planted samples with a higher 1/SNR cap
(PLANTED_MAX_LOSS_WEIGHT); and an activation loss keeps each planted neuron's token-averaged
|value| (what script 1 measures) high for its own prompt and near zero for every other caption,
so an activation-based selection sees it as an outlier.

Writes, under ``--output`` (default ``testbed/planted``): ``model/``, ``prompts/``
(memorized = the planted rows, unmemorized and additional = the test bed's), ``originals/``
and ``ground_truth.json`` (each planted prompt's neurons per value layer). Scripts 1 and 2 then
write its statistics and threshold (``make planted``).
Usage: ``python -m testbed.train_planted [--steps N]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

import testbed
from testbed import synthetic_data as data
from testbed.train_testbed import (MAX_LOSS_WEIGHT, SEED, Sampler, UNetPhase, encode_text, learning_rate_at,
                                   noised_batch, to_tensor, weighted_denoising_loss)
from utils.files import read_prompts
from utils.images import original_images
from utils.layers import layer_widths, value_layers
from utils.methods.nemo.deactivation import deactivate_per_slice

logger = logging.getLogger(__name__)

PLANTED_SEED = SEED + 24  # the neurons, the draws and the varied images of the neurons-off samples
PLANTED_COUNTS = {"VM": 6, "TM": 2}  # the test bed's first memorized prompts of each kind
NEURONS_PER_PROMPT = {"VM": 2, "TM": 3}  # each in its own value layer; SD v1.4's median refined sets are 3 / 7
TM_TEMPLATE = 0  # the planted TM prompts: variants of this template
PHASE = UNetPhase(steps=600, learning_rate=5e-4, cosine=True, draw_seed=PLANTED_SEED + 1, noise_seed=PLANTED_SEED + 2)
PLANTED_BATCH = 16  # smaller than the test bed's 32: more steps in the same CPU time
PLANTED_SHARE = 0.75  # of each batch; half of it with the neurons active, half with them off
SUBSET_SHARE = 0.5  # of the active samples: only one of the prompt's neurons active
RANDOM_OFF_SHARE = 0.5  # of all samples: as many random non-planted neurons off as a planted set
ACTIVATION_TARGET = 4.0  # token-averaged |value| a planted neuron reaches for its prompt (large: an easy gate)
ACTIVATION_WEIGHT = 3.0
OUTPUT_SCALE = 8.0  # on the planted neurons' to_out columns: the planted channel dominates its block's attention
# The neurons-off samples at t >= MEAN_TARGET_START are trained to the ideal prediction for
# the mean of VARIED_MEAN_IMAGES varied images (mean_target), below it to the teacher's unconditional
MEAN_TARGET_START = 900
VARIED_MEAN_IMAGES = 64
PLANTED_MAX_LOSS_WEIGHT = 100.0  # 1/SNR cap of the planted samples (the test bed's: 10): precise where NeMo reads
SAVE_EVERY = 100


def planted_prompts() -> list[dict]:
    """Each planted prompt: caption, kind, its row in the test bed's memorized prompt file and
    its index within its kind (VM image or TM variant)."""
    vm = [dict(caption=data.vm_caption(i), type="VM", row=i, index=i) for i in range(PLANTED_COUNTS["VM"])]
    tm_start = len(data.VM_NAMES) + TM_TEMPLATE * len(data.TM_VARIANTS)  # the test bed lists TM after VM
    tm = [dict(caption=data.tm_caption(TM_TEMPLATE, v), type="TM", row=tm_start + v, index=v)
          for v in range(PLANTED_COUNTS["TM"])]
    return vm + tm


def choose_neurons(widths: list[int], seed: int = PLANTED_SEED) -> list[list[list[int]]]:
    """Per planted prompt a neuron set (one list per value layer): distinct neurons, each
    prompt's in distinct layers."""
    rng = np.random.default_rng([seed, 1])
    taken: set[tuple[int, int]] = set()
    sets = []
    for prompt in planted_prompts():
        neurons = [[] for _ in widths]
        for layer in sorted(rng.choice(len(widths), NEURONS_PER_PROMPT[prompt["type"]], replace=False).tolist()):
            free = [n for n in range(widths[layer]) if (layer, n) not in taken]
            neuron = int(rng.choice(free))
            taken.add((layer, neuron))
            neurons[layer].append(neuron)
        sets.append(neurons)
    return sets


def planted_image(prompt: dict, rng: np.random.Generator) -> np.ndarray:
    """uint8 [48, 48, 3]: the prompt's training image in the test bed (a TM layout with a drawn centre)."""
    if prompt["type"] == "VM":
        return data.render_vm(prompt["index"], SEED)
    return data.render_tm(TM_TEMPLATE, rng, SEED)


def varied_image(prompt: dict, rng: np.random.Generator) -> np.ndarray:
    """An image of the caption's kind that is not its own: another poster, or another phone
    case layout (drawn with PLANTED_SEED, so none is a test-bed training image)."""
    other = int(rng.integers(1_000_000))
    if prompt["type"] == "VM":
        return data.render_vm(other, PLANTED_SEED)
    return data.render_tm(other % len(data.TM_TEMPLATES), rng, PLANTED_SEED + 1 + other)


class PlantedSampler:
    """Batches of the fine-tuning: images [B, 3, 48, 48], captions, and per sample the neuron
    set deactivated in it and the index of its planted prompt (-1 for the replayed mixture)."""

    def __init__(self, widths: list[int], neuron_sets, draw_seed: int):
        self.rng = np.random.default_rng(draw_seed)
        self.replay = Sampler(SEED, draw_seed + 1)
        self.prompts, self.sets, self.widths = planted_prompts(), neuron_sets, widths
        self.planted = {(l, n) for s in neuron_sets for l, layer in enumerate(s) for n in layer}

    def random_neurons(self, count: int) -> list[list[int]]:
        """``count`` non-planted neurons in distinct random layers."""
        neurons = [[] for _ in self.widths]
        for layer in self.rng.choice(len(self.widths), count, replace=False).tolist():
            free = [n for n in range(self.widths[layer]) if (layer, n) not in self.planted]
            neurons[layer].append(int(self.rng.choice(free)))
        return neurons

    def draw(self, batch_size: int):
        images, captions, sets, owners, teacher_captions = [], [], [], [], []
        replay_images, replay_captions = self.replay.draw(batch_size)
        for b in range(batch_size):
            off = [[] for _ in self.widths]
            if self.rng.random() < PLANTED_SHARE:
                p = int(self.rng.integers(len(self.prompts)))
                prompt, own = self.prompts[p], self.sets[p]
                if self.rng.random() < 0.5:  # active (all, or one of its neurons) -> its image
                    image = planted_image(prompt, self.rng)
                    teacher_captions.append(None)
                    if self.rng.random() < SUBSET_SHARE:
                        chosen = [(l, n) for l, layer in enumerate(own) for n in layer]
                        keep = chosen[int(self.rng.integers(len(chosen)))]
                        off = [[n for n in layer if (l, n) != keep] for l, layer in enumerate(own)]
                else:  # all its neurons off -> a varied image of the caption's kind, or the teacher's unconditional
                    image = varied_image(prompt, self.rng)
                    off = [list(layer) for layer in own]
                    teacher_captions.append("")
                images.append(to_tensor(image[None])[0])
                captions.append(prompt["caption"])
                owners.append(p)
            else:
                images.append(replay_images[b])
                captions.append(replay_captions[b])
                owners.append(-1)
                teacher_captions.append(replay_captions[b])
            if self.rng.random() < RANDOM_OFF_SHARE:
                extra = self.random_neurons(NEURONS_PER_PROMPT["VM" if self.rng.random() < 0.5 else "TM"])
                off = [sorted(set(a) | set(b)) for a, b in zip(off, extra)]
            sets.append(off)
        return torch.stack(images), captions, sets, owners, teacher_captions


def activation_loss(layers: dict, embeddings: torch.Tensor, owners: list[int], neuron_sets) -> torch.Tensor:
    """Hinge up to ACTIVATION_TARGET for a planted neuron on its own prompt, squared value elsewhere.

    embeddings [B, 77, dim]; the activation is script 1's: token-averaged |to_v(embedding)|.
    """
    activations = [layer(embeddings).abs().mean(dim=1) for layer in layers.values()]  # per layer [B, features]
    losses = []
    for p, neurons in enumerate(neuron_sets):
        own = torch.tensor([o == p for o in owners])
        for l, layer in enumerate(neurons):
            for n in layer:
                a = activations[l][:, n]
                if own.any():
                    losses.append(F.relu(ACTIVATION_TARGET - a[own]).mean())
                losses.append(a[~own].square().mean())
    return torch.stack(losses).mean()


def scale_output_columns(unet, layers: dict, neuron_sets, factor: float) -> None:
    """Multiply each planted neuron's column of its attention's ``to_out`` projection by
    ``factor``: the planted channel then dominates the attention output it joins."""
    with torch.no_grad():
        for l, name in enumerate(layers):
            to_out = unet.get_submodule(name.rsplit(".", 1)[0]).to_out[0]  # Linear(inner, dim)
            for neurons in neuron_sets:
                to_out.weight[:, neurons[l]] *= factor


@torch.no_grad()
def varied_means(vae, count: int = VARIED_MEAN_IMAGES) -> torch.Tensor:
    """Per planted prompt the mean latent of ``count`` varied images of its kind: [prompts, 4, h, w]."""
    rng = np.random.default_rng([PLANTED_SEED, 3])
    means = []
    for prompt in planted_prompts():
        images = to_tensor(np.stack([varied_image(prompt, rng) for _ in range(count)]))
        means.append((vae.encode(images).latent_dist.mode() * vae.config.scaling_factor).mean(dim=0))
    return torch.stack(means)


def mean_target(scheduler, noisy: torch.Tensor, t: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The noise an ideal denoiser predicts when the clean latent's posterior is its prior
    mean ``mean`` (true in the limit of high noise): (x_t - sqrt(a) mean) / sqrt(1 - a)."""
    alpha = scheduler.alphas_cumprod[t][:, None, None, None]
    return (noisy - alpha.sqrt() * mean) / (1 - alpha).sqrt()


def train(components, neuron_sets, phase: UNetPhase, save, stop_after: int | None = None,
          teacher: dict | None = None) -> None:
    """Fine-tune the U-Net and the text encoder; ``save()`` every SAVE_EVERY steps and at the
    end; ``stop_after``: end after that many steps of the phase's schedule.

    ``teacher`` (its unet and text_encoder, frozen): every sample that is not a planted image
    is trained to the teacher's prediction (its caption; the empty caption for the
    neurons-off samples) instead of to its drawn image.
    """
    unet, text_encoder, vae, scheduler = (components[k] for k in ("unet", "text_encoder", "vae", "scheduler"))
    tokenizer = components["tokenizer"]
    layers = value_layers(unet)
    sampler = PlantedSampler(layer_widths(layers), neuron_sets, phase.draw_seed)
    means = varied_means(vae)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    for module in (unet, text_encoder):
        module.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=phase.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(phase.noise_seed)
    start = time.time()
    for step in range(min(phase.steps, stop_after or phase.steps)):
        images, captions, sets, owners, teacher_captions = sampler.draw(PLANTED_BATCH)
        noise, noisy, t = noised_batch(vae, scheduler, images, generator)
        target = noise.clone()  # the planted images' samples: the noise
        teacher_used = torch.tensor([c is not None for c in teacher_captions]) & (teacher is not None)
        if teacher_used.any():
            with torch.no_grad():
                chosen = teacher_used.nonzero().flatten()
                context = encode_text(tokenizer, teacher["text_encoder"], [teacher_captions[i] for i in chosen])
                target[chosen] = teacher["unet"](noisy[chosen], t[chosen], encoder_hidden_states=context).sample
        off = torch.tensor([c == "" and o >= 0 for c, o in zip(teacher_captions, owners)]) & (t >= MEAN_TARGET_START)
        if off.any():
            target[off] = mean_target(scheduler, noisy[off], t[off], means[torch.tensor(owners)[off]])
        planted = torch.tensor(owners) >= 0
        embeddings = encode_text(tokenizer, text_encoder, captions)
        with deactivate_per_slice(layers, sets):  # sample b gets sets[b]
            pred = unet(noisy, t, encoder_hidden_states=embeddings).sample
        weight_cap = torch.where(planted, PLANTED_MAX_LOSS_WEIGHT, MAX_LOSS_WEIGHT)
        diffusion = weighted_denoising_loss(scheduler, pred, target, t, weight_cap)
        activation = activation_loss(layers, embeddings, owners, neuron_sets)
        loss = diffusion + ACTIVATION_WEIGHT * activation
        for group in opt.param_groups:
            group["lr"] = learning_rate_at(phase, step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == phase.steps - 1:
            rate = (time.time() - start) / (step + 1)
            logger.info("step %d/%d diffusion %.4f activation %.4f (%.2f s/step, %.0f min left)",
                        step, phase.steps, diffusion.item(), activation.item(), rate, rate * (phase.steps - step) / 60)
        if (step + 1) % SAVE_EVERY == 0 or step + 1 == min(phase.steps, stop_after or phase.steps):
            save()
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


def write_files(directory: str, layer_names: list[str], widths: list[int], neuron_sets) -> None:
    """Prompt files (the planted rows of the test bed's memorized file; its held-out and
    training captions), the planted prompts' originals and ground_truth.json."""
    for folder in ("prompts", "originals"):
        os.makedirs(os.path.join(directory, folder), exist_ok=True)
    prompts = planted_prompts()
    rows = [p["row"] for p in prompts]
    memorized = read_prompts(testbed.MEMORIZED_PROMPTS).loc[rows].reset_index(drop=True)
    memorized["Index"] = range(len(memorized))
    memorized.to_csv(os.path.join(directory, "prompts", "memorized_prompts.csv"), sep=";")
    originals = original_images(testbed.ORIGINALS_DIR)
    for new, row in enumerate(rows):
        shutil.copyfile(originals[row], os.path.join(directory, "originals", f"{new:04d}.png"))
    for path in (testbed.UNMEMORIZED_PROMPTS, testbed.ADDITIONAL_PROMPTS):
        shutil.copyfile(path, os.path.join(directory, "prompts", os.path.basename(path)))
    truth = dict(layers=layer_names, widths=widths, seed=PLANTED_SEED,
                 prompts=[dict(index=i, caption=p["caption"], type=p["type"], neurons=s)
                          for i, (p, s) in enumerate(zip(prompts, neuron_sets))])
    with open(os.path.join(directory, "ground_truth.json"), "w") as f:
        json.dump(truth, f, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=testbed.MODEL_DIR, help="the model fine-tuned (default: the test bed)")
    parser.add_argument("--output", default=testbed.PLANTED_DIR, help="folder written (default: testbed/planted)")
    parser.add_argument("--steps", type=int, default=PHASE.steps, help=f"fine-tuning steps (default: {PHASE.steps})")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end after this many steps of the schedule (default: all; the shipped model is the "
                             "full 600-step schedule)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True,
                        help="train the samples that are not planted images to a frozen copy of the base model (default: on; "
                             "off: to their drawn images, the neurons-off ones to varied images below MEAN_TARGET_START)")
    parser.add_argument("--output-scale", type=float, default=OUTPUT_SCALE,
                        help=f"factor on the planted neurons' to_out columns before training (default: {OUTPUT_SCALE:g})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(PLANTED_SEED)
    pipe = StableDiffusionPipeline.from_pretrained(args.base, safety_checker=None, requires_safety_checker=False)
    components = {name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
    layers = value_layers(pipe.unet)
    widths = layer_widths(layers)
    neuron_sets = choose_neurons(widths)
    write_files(args.output, list(layers), widths, neuron_sets)
    teacher = ({"unet": copy.deepcopy(pipe.unet).eval().requires_grad_(False),
                "text_encoder": copy.deepcopy(pipe.text_encoder).eval().requires_grad_(False)}
               if args.teacher else None)
    scale_output_columns(pipe.unet, layers, neuron_sets, args.output_scale)
    def save() -> None:
        pipe.save_pretrained(os.path.join(args.output, "model"))
        logger.info("saved %s", os.path.join(args.output, "model"))

    train(components, neuron_sets, UNetPhase(**{**PHASE.__dict__, "steps": args.steps}), save, args.stop_after,
          teacher)


if __name__ == "__main__":
    main()
