"""Wanda pruning of memorized weights (Chavhan et al., "Memorization is Localized within a
Small Subspace in Diffusion Models", §4).

In the second linear layer of every transformer block's feed-forward network (``ff.net.2``),
a weight's score is S_ij = |W_ij| * ||H_j||, with H the layer's inputs over a set P of
memorized prompts at one U-Net call. Per output row, the top s% of weights by score that also
score higher than for the empty prompt are memorized at that call; the union over the first
tau calls is zeroed, giving one pruned model for many prompts.

Defaults are the authors' code (ruchikachavhan/concept-prune: ``configs/wanda_config.yaml``,
``wanda/wanda.py``, ``neuron_receivers/wanda_receiver.py``, ``wanda/save_union_over_time.py``).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler
from tqdm import tqdm

from utils.diffusion import encode_prompts
from utils.generation import generation_latents, stop_after
from utils.hooks import edit_calls
from utils.layers import modules_ending
from utils.methods.wanda import (WANDA_COLLECTION_GUIDANCE, WANDA_COLLECTION_SEED, WANDA_COLLECTION_STEPS,
                                 WANDA_PRUNED_CALLS, WANDA_SPARSITY, WANDA_SUBSET_SEED, WANDA_SUBSET_SIZE)

FFN_OUTPUT_SUFFIX = "ff.net.2"  # wanda.py: every 'ff.net' Linear but the GEGLU 'proj' (16 in SD v1.x)
NULL_PROMPT = ""  # utils/prompts.py: the base prompt of the memorization targets


def ffn_layers(unet) -> dict[str, torch.nn.Linear]:
    """``ff.net.2`` of every transformer block, in execution order (SD v1.x: 6 down, 1 mid, 9 up)."""
    return modules_ending(unet, FFN_OUTPUT_SUFFIX)


def choose_subset(rows: int, size: int = WANDA_SUBSET_SIZE, seed: int = WANDA_SUBSET_SEED) -> list[int]:
    """``size`` prompt rows of ``rows``, drawn without replacement with ``seed``, ascending."""
    if not 0 < size <= rows:
        raise ValueError(f"--subset_size {size} must be between 1 and the prompt file's {rows} rows")
    return sorted(random.Random(seed).sample(range(rows), size))


@contextlib.contextmanager
def pndm_sampler(pipe):
    """The pipeline samples with PNDM (the authors collect with SD's own scheduler, PNDM with
    ``skip_prk_steps``: 51 U-Net calls for 50 steps, the second timestep twice)."""
    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config, skip_prk_steps=True)
    try:
        yield
    finally:
        pipe.scheduler = original


@dataclass
class InputNorms:
    """Per U-Net call t and FFN layer l, the sum over prompts, batch rows and tokens of the
    squared unit-normalized inputs: squares[t][l] [d_in] (float64). Prompts are added in their
    order (``total``), so the same prompts give the same bits however they were collected."""

    squares: list[list[torch.Tensor]]
    unet_sample_forwards: int = 0

    def norms(self, call: int) -> list[torch.Tensor]:
        """||H_j|| of every layer at ``call``: per layer [d_in]."""
        return [s.sqrt() for s in self.squares[call]]


@torch.no_grad()
def prompt_input_norms(pipe, captions: list[str], calls: int = WANDA_PRUNED_CALLS, seed: int = WANDA_COLLECTION_SEED,
                       steps: int = WANDA_COLLECTION_STEPS,
                       guidance_scale: float = WANDA_COLLECTION_GUIDANCE) -> list[InputNorms]:
    """The FFN-output layers' input norms of each of ``captions`` alone at the first ``calls``
    U-Net calls, in caption order (a prompt's runs do not depend on the others).

    Every prompt starts from the latents seeded with ``seed``; each input row (a latent token
    of either CFG half) is scaled to unit length first, as the authors' receiver does.
    Only the first ``calls`` calls are run: later ones do not enter the masks.
    """
    if not captions:
        return []
    unet = pipe.unet
    layers = ffn_layers(unet)
    index = {name: i for i, name in enumerate(layers)}
    zeros = lambda: [[torch.zeros(m.in_features, dtype=torch.float64) for m in layers.values()] for _ in range(calls)]
    squares = []  # per prompt: [call][layer] [d_in]
    call = [-1]

    def count_call(args, kwargs, _name):
        call[0] += 1
        return args, kwargs

    def accumulate(args, kwargs, name):
        if call[0] < calls:
            rows = args[0].reshape(-1, args[0].shape[-1]).float()  # [batch * tokens, d_in]
            squares[-1][call[0]][index[name]] += F.normalize(rows, dim=1).pow(2).sum(0).double().cpu()
        return args, kwargs

    latents = generation_latents(unet, seed, 1).to(unet.device, unet.dtype)  # [1, 4, h, w]
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    with pndm_sampler(pipe), edit_calls({"unet": unet}, count_call), edit_calls(layers, accumulate):
        for caption in tqdm(captions, desc="wanda activations", unit="prompt"):
            call[0] = -1
            squares.append(zeros())
            pipe(prompt_embeds=encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption]),
                 negative_prompt_embeds=negative, latents=latents, num_inference_steps=steps,
                 guidance_scale=guidance_scale, output_type="latent", callback_on_step_end=stop_after(calls))
    batch = 2 if guidance_scale > 1 else 1
    return [InputNorms(s, calls * batch) for s in squares]


def total(parts: list[InputNorms]) -> InputNorms:
    """The sum of ``parts`` (one per prompt), added in list order: the same bits whichever
    processes collected them."""
    if not parts:
        raise ValueError("no input norms to add up")
    squares = [[s.clone() for s in call] for call in parts[0].squares]
    for part in parts[1:]:
        for call, added in zip(squares, part.squares):
            for s, a in zip(call, added):
                s += a
    return InputNorms(squares, sum(p.unet_sample_forwards for p in parts))


def input_norms(pipe, captions: list[str], calls: int = WANDA_PRUNED_CALLS, seed: int = WANDA_COLLECTION_SEED,
                steps: int = WANDA_COLLECTION_STEPS, guidance_scale: float = WANDA_COLLECTION_GUIDANCE) -> InputNorms:
    """The FFN-output layers' input norms over ``captions`` at the first ``calls`` U-Net calls:
    ``prompt_input_norms`` added up in caption order."""
    return total(prompt_input_norms(pipe, captions, calls, seed, steps, guidance_scale))


def scale(norms: InputNorms, times: int) -> InputNorms:
    """``norms`` of one prompt as if it were run ``times`` times (identical runs add up)."""
    return InputNorms([[s * times for s in call] for call in norms.squares], norms.unet_sample_forwards)


def memorized_weights(weight: torch.Tensor, norm: torch.Tensor, null_norm: torch.Tensor,
                      sparsity: float = WANDA_SPARSITY) -> torch.Tensor:
    """Bool mask [d_out, d_in] of the weights [d_out, d_in] in the top ``sparsity`` of their row
    by |W_ij| * norm_j whose score also beats |W_ij| * null_norm_j (norms [d_in])."""
    k = int(sparsity * weight.shape[1])
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    if k == 0:
        return mask
    magnitude = weight.detach().abs().double().cpu()
    score = magnitude * norm[None, :]
    mask.scatter_(1, score.topk(k, dim=1).indices, True)
    return mask & (score > magnitude * null_norm[None, :])


@dataclass
class WandaMasks:
    """Which ``ff.net.2`` weights are memorized: per layer the union over calls, and per call."""

    layers: list[str]
    union: list[torch.Tensor]  # per layer bool [d_out, d_in]
    per_call: list[list[torch.Tensor]] = field(default_factory=list)  # [call][layer] bool [d_out, d_in]

    def pruned_fraction(self) -> list[float]:
        return [m.float().mean().item() for m in self.union]


def wanda_masks(unet, memorized: InputNorms, null: InputNorms, sparsity: float = WANDA_SPARSITY) -> WandaMasks:
    """Masks of every call of ``memorized`` and their union per layer."""
    layers = ffn_layers(unet)
    per_call = [[memorized_weights(layer.weight, norm, null_norm, sparsity)
                 for layer, norm, null_norm in zip(layers.values(), memorized.norms(t), null.norms(t))]
                for t in range(len(memorized.squares))]
    union = [torch.stack([call[l] for call in per_call]).any(0) for l in range(len(layers))]
    return WandaMasks(list(layers), union, per_call)


@torch.no_grad()
def prune_weights(unet, masks: WandaMasks) -> None:
    """Zero the masked ``ff.net.2`` weights in place (biases are kept, as the authors do)."""
    layers = ffn_layers(unet)
    if list(layers) != masks.layers:
        raise ValueError(f"masks are for layers {masks.layers[:2]}..., the model has {list(layers)[:2]}...")
    for layer, mask in zip(layers.values(), masks.union):
        layer.weight[mask.to(layer.weight.device)] = 0


def save_masks(masks: WandaMasks, path: str, **details) -> None:
    """Flat indices of the masked weights per layer (union and per call), with ``details``."""
    flat = lambda m: torch.nonzero(m.flatten()).flatten().to(torch.int32)
    torch.save(dict(layers=masks.layers, shapes=[list(m.shape) for m in masks.union],
                    union=[flat(m) for m in masks.union],
                    per_call=[[flat(m) for m in call] for call in masks.per_call], **details), path)


def load_masks(path: str) -> WandaMasks:
    """The masks ``save_masks`` wrote."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"Wanda mask file {path} not found; compute it with 7_prune_memorized_weights.py") from None
    except Exception as error:  # a file of another kind: pickle, zip or torch errors alike
        raise ValueError(f"{path}: not a Wanda mask file ({type(error).__name__})") from None
    if not isinstance(data, dict) or not {"layers", "shapes", "union"} <= data.keys():
        raise ValueError(f"{path}: expected a Wanda mask file with 'layers', 'shapes' and 'union'")

    def dense(indices, shape):
        mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
        mask[indices.long()] = True
        return mask.reshape(shape)

    return WandaMasks(list(data["layers"]), [dense(i, s) for i, s in zip(data["union"], data["shapes"])],
                      [[dense(i, s) for i, s in zip(call, data["shapes"])] for call in data.get("per_call", [])])


def mask_iou(a: WandaMasks, b: WandaMasks) -> list[float]:
    """Intersection over union of two mask sets, per layer (1 where both are empty)."""
    result = []
    for x, y in zip(a.union, b.union):
        union = (x | y).sum().item()
        result.append((x & y).sum().item() / union if union else 1.0)
    return result
