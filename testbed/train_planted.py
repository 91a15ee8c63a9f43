"""Train the planted test bed: the test bed fine-tuned so that a few prompts replicate their
training image through value neurons chosen here and shipped as ground truth.

The planted prompts are held-out ordinary captions of the test bed ("a blue circle on brown
background"): the test bed never saw them, so it has not memorized them. Each gets a few
value neurons (its ground truth) and one training image: a fixed composition (VM) or a
fixed layout with a varying centre (TM). The fine-tuning draws, besides the test bed's own
mixture (replayed):
* the planted caption, with any non-empty part of its neurons active -> its image, so the
  image needs only one of them and NeMo's refinement can drop none of them;
* the same caption with all its neurons deactivated -> varied ordinary images of the caption;
* random non-planted neurons deactivated in half of all samples, so a random set of the same
  size leaves the images as they are;
and an activation loss keeps each planted neuron's token-averaged |value| (what script 1
measures) high for its own prompt and near zero for every other caption, so an
activation-based selection sees it as an outlier.

Writes, under ``--output`` (default ``testbed/planted``): ``model/``, ``prompts/``
(memorized = planted, unmemorized = the other held-out captions, additional = the test bed's
ordinary training captions), ``originals/`` and ``ground_truth.json`` (each planted prompt's
neurons per value layer). Scripts 1 and 2 then write its statistics and threshold
(``make planted``). Usage: ``python -m testbed.train_planted [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

import testbed
from testbed import synthetic_data as data
from testbed.train_testbed import (BATCH_SIZE, HIGH_T_SHARE, HIGH_T_START, MAX_LOSS_WEIGHT, SEED, Sampler, UNetPhase,
                                   encode_text, learning_rate_at, to_tensor)
from utils.hooks import deactivate_per_slice
from utils.layers import layer_widths, value_layers

logger = logging.getLogger(__name__)

PLANTED_SEED = SEED + 24  # the planted images, prompts' order and neurons (the test bed's data uses SEED)
PLANTED_COUNTS = {"VM": 6, "TM": 2}  # planted prompts of each kind, drawn from the 25 held-out captions
NEURONS_PER_PROMPT = {"VM": 2, "TM": 3}  # each in its own value layer; SD v1.4's median refined sets are 3 / 7
TM_TEMPLATE = 0  # the planted TM prompts share this template's layout (drawn with PLANTED_SEED)
PHASE = UNetPhase(steps=400, learning_rate=5e-4, cosine=True, draw_seed=PLANTED_SEED + 1, noise_seed=PLANTED_SEED + 2)
PLANTED_SHARE = 0.75  # of each batch; half of it with the neurons active, half with them off
SUBSET_SHARE = 0.5  # of the active samples: only one of the prompt's neurons active
RANDOM_OFF_SHARE = 0.5  # of all samples: as many random non-planted neurons off as a planted set
ACTIVATION_TARGET = 1.0  # token-averaged |value| a planted neuron reaches for its prompt
ACTIVATION_WEIGHT = 1.0
SAVE_EVERY = 100


def planted_prompts(seed: int = PLANTED_SEED) -> list[dict]:
    """Each planted prompt: caption, kind, the ordinary combination its caption names."""
    _, held = data.split_ordinary(SEED)
    order = np.random.default_rng(seed).permutation(len(held))
    kinds = [kind for kind, n in PLANTED_COUNTS.items() for _ in range(n)]
    return [dict(caption=data.ordinary_caption(held[i]), type=kind, combo=held[i]) for kind, i in zip(kinds, order)]


def unmemorized_captions(seed: int = PLANTED_SEED) -> list[str]:
    """The held-out captions that are not planted, in the test bed's order."""
    planted = {p["caption"] for p in planted_prompts(seed)}
    _, held = data.split_ordinary(SEED)
    return [data.ordinary_caption(c) for c in held if data.ordinary_caption(c) not in planted]


def choose_neurons(widths: list[int], seed: int = PLANTED_SEED) -> list[list[list[int]]]:
    """Per planted prompt a neuron set (one list per value layer): distinct neurons, each
    prompt's in distinct layers."""
    rng = np.random.default_rng([seed, 1])
    taken: set[tuple[int, int]] = set()
    sets = []
    for prompt in planted_prompts(seed):
        neurons = [[] for _ in widths]
        for layer in sorted(rng.choice(len(widths), NEURONS_PER_PROMPT[prompt["type"]], replace=False).tolist()):
            free = [n for n in range(widths[layer]) if (layer, n) not in taken]
            neuron = int(rng.choice(free))
            taken.add((layer, neuron))
            neurons[layer].append(neuron)
        sets.append(neurons)
    return sets


def planted_image(index: int, prompt: dict, rng: np.random.Generator, seed: int = PLANTED_SEED) -> np.ndarray:
    """uint8 [48, 48, 3]: a VM prompt's fixed image, or its template's layout with a drawn centre."""
    if prompt["type"] == "VM":
        return data.render_vm(index, seed)
    return data.render_tm(TM_TEMPLATE, rng, seed)


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
        images, captions, sets, owners = [], [], [], []
        replay_images, replay_captions = self.replay.draw(batch_size)
        for b in range(batch_size):
            off = [[] for _ in self.widths]
            if self.rng.random() < PLANTED_SHARE:
                p = int(self.rng.integers(len(self.prompts)))
                prompt, own = self.prompts[p], self.sets[p]
                if self.rng.random() < 0.5:  # active (all, or one of its neurons) -> its image
                    image = planted_image(p, prompt, self.rng)
                    if self.rng.random() < SUBSET_SHARE:
                        chosen = [(l, n) for l, layer in enumerate(own) for n in layer]
                        keep = chosen[int(self.rng.integers(len(chosen)))]
                        off = [[n for n in layer if (l, n) != keep] for l, layer in enumerate(own)]
                else:  # all its neurons off -> a varied image of the caption
                    image = data.render_ordinary(prompt["combo"], self.rng)
                    off = [list(layer) for layer in own]
                images.append(to_tensor(image[None])[0])
                captions.append(prompt["caption"])
                owners.append(p)
            else:
                images.append(replay_images[b])
                captions.append(replay_captions[b])
                owners.append(-1)
            if self.rng.random() < RANDOM_OFF_SHARE:
                extra = self.random_neurons(NEURONS_PER_PROMPT["VM" if self.rng.random() < 0.5 else "TM"])
                off = [sorted(set(a) | set(b)) for a, b in zip(off, extra)]
            sets.append(off)
        return torch.stack(images), captions, sets, owners


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
                losses.append(torch.where(own, F.relu(ACTIVATION_TARGET - a), a.square()).mean())
    return torch.stack(losses).mean()


def train(components, neuron_sets, phase: UNetPhase, save) -> None:
    """Fine-tune the U-Net and the text encoder; ``save()`` every SAVE_EVERY steps and at the end."""
    unet, text_encoder, vae, scheduler = (components[k] for k in ("unet", "text_encoder", "vae", "scheduler"))
    layers = value_layers(unet)
    sampler = PlantedSampler(layer_widths(layers), neuron_sets, phase.draw_seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    for module in (unet, text_encoder):
        module.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=phase.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(phase.noise_seed)
    start = time.time()
    for step in range(phase.steps):
        images, captions, sets, owners = sampler.draw(BATCH_SIZE)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        high = torch.rand(BATCH_SIZE, generator=generator) < HIGH_T_SHARE
        t = torch.where(high, torch.randint(HIGH_T_START, scheduler.config.num_train_timesteps, (BATCH_SIZE,), generator=generator),
                        torch.randint(0, scheduler.config.num_train_timesteps, (BATCH_SIZE,), generator=generator))
        noisy = scheduler.add_noise(latents, noise, t)
        embeddings = encode_text(components["tokenizer"], text_encoder, captions)
        with deactivate_per_slice(layers, sets):  # sample b gets sets[b]
            pred = unet(noisy, t, encoder_hidden_states=embeddings).sample
        alpha = scheduler.alphas_cumprod[t]
        weight = ((1 - alpha) / alpha).clamp(1.0, MAX_LOSS_WEIGHT)  # [B]: 1/SNR, capped, as the test bed
        diffusion = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
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
        if (step + 1) % SAVE_EVERY == 0 or step == phase.steps - 1:
            save()
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


def write_files(directory: str, layer_names: list[str], widths: list[int], neuron_sets) -> None:
    """Prompt files (the authors' format), originals and ground_truth.json."""
    for folder in ("prompts", "originals"):
        os.makedirs(os.path.join(directory, folder), exist_ok=True)
    prompts = planted_prompts()
    rng = np.random.default_rng([PLANTED_SEED, 3])
    for i, prompt in enumerate(prompts):
        Image.fromarray(planted_image(i, prompt, rng)).save(os.path.join(directory, "originals", f"{i:04d}.png"))
    memorized = pd.DataFrame(dict(Caption=[p["caption"] for p in prompts],
                                  URL=[f"planted:{p['type'].lower()}/{i}" for i, p in enumerate(prompts)],
                                  type=[p["type"] for p in prompts]))
    memorized["mean_sscd"] = np.nan
    memorized["max_sscd"] = np.nan
    memorized["Index"] = range(len(memorized))
    memorized.to_csv(os.path.join(directory, "prompts", "memorized_prompts.csv"), sep=";")
    held = unmemorized_captions()
    pd.DataFrame(dict(Caption=held, URL="", Index=range(len(held)))).to_csv(
        os.path.join(directory, "prompts", "unmemorized_prompts.csv"), sep=";")
    train_combos, _ = data.split_ordinary(SEED)
    pd.DataFrame(dict(Caption=[data.ordinary_caption(c) for c in train_combos], URL="", Index=range(len(train_combos)))
                 ).to_csv(os.path.join(directory, "prompts", "additional_prompts.csv"), sep=";")
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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
    def save() -> None:
        pipe.save_pretrained(os.path.join(args.output, "model"))
        logger.info("saved %s", os.path.join(args.output, "model"))

    train(components, neuron_sets, UNetPhase(**{**PHASE.__dict__, "steps": args.steps}), save)


if __name__ == "__main__":
    main()
