"""Attention scaling (Ren et al., ECCV 2024), the inference-time mitigation of Table 1.

In every cross-attention layer of the U-Net, at every denoising step, the pre-softmax logit
of the first key token (BOS) is multiplied by a factor C for the conditional half of the
batch, and the keys after the prompt (past BOS, its tokens and the first end token) are
masked in both halves. Defaults are those of the authors' mitigation command
(renjie3/MemAttn, ``local_cmd_inference_time_mitigation.sh``: ``--c1 1.25 --cross_attn_mask``).

Both edits go through ``utils.hooks``: the BOS logit q·k_0 / sqrt(d) scales with k_0, and
``to_k`` has no bias, so multiplying the key projection's output at token 0 by C multiplies
exactly that logit by C; the mask is the ``attention_mask`` argument of the attention call.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from torch import nn

from utils.cost import PromptCost
from utils.generation import Prepare, PromptCondition, caption_condition
from utils.hooks import edit_calls, edit_outputs
from utils.layers import modules_ending
from utils.methods.ren import REN_BOS_LOGIT_FACTOR, REN_MASK_PADDING

CROSS_ATTENTION_SUFFIX = "attn2"  # diffusers' name of a transformer block's cross-attention


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every cross-attention module (``attn2``) of the U-Net: 16 in SD v1.x (down, mid, up)."""
    found = modules_ending(unet, CROSS_ATTENTION_SUFFIX)
    for name, module in found.items():
        if module.to_k.bias is not None:
            raise ValueError(f"{name}.to_k has a bias: scaling its output would not scale the BOS logit alone")
    return found


def prompt_length(tokenizer, caption: str) -> int:
    """Tokens the caption occupies without padding: BOS, its tokens and one end token (at most 77)."""
    return min(len(tokenizer(caption, truncation=True).input_ids), tokenizer.model_max_length)


@contextmanager
def scale_attention(unet: nn.Module, length: int, guided: bool, factor: float = REN_BOS_LOGIT_FACTOR,
                    mask_padding: bool = REN_MASK_PADDING) -> Iterator[None]:
    """Ren et al.'s attention scaling in force for every U-Net call inside the context.

    length: the prompt's ``prompt_length``; guided: whether each call's batch is
    [unconditional half, conditional half] (classifier-free guidance), so only the second
    half's BOS logit is scaled; without guidance the whole batch is conditional.
    """
    layers = cross_attention_layers(unet)

    def scale_bos_key(key: torch.Tensor, _name: str) -> torch.Tensor:
        scaled = key.clone()  # [batch, 77, inner_dim]
        start = key.shape[0] // 2 if guided else 0
        scaled[start:, 0] *= factor
        return scaled

    def mask_keys(args: tuple, kwargs: dict, _name: str) -> tuple[tuple, dict]:
        if kwargs.get("attention_mask") is not None:
            raise ValueError("attention scaling expects cross-attention without a mask of its own")
        hidden = args[0] if args else kwargs["hidden_states"]  # [batch, pixels, channels]
        keys = kwargs["encoder_hidden_states"].shape[1]
        mask = torch.zeros(hidden.shape[0], 1, keys, device=hidden.device, dtype=hidden.dtype)
        mask[..., length:] = float("-inf")  # additive: the padding keys get no attention
        return args, {**kwargs, "attention_mask": mask}

    with ExitStack() as stack:
        stack.enter_context(edit_outputs({f"{n}.to_k": m.to_k for n, m in layers.items()}, scale_bos_key))
        if mask_padding:
            stack.enter_context(edit_calls(layers, mask_keys))
        yield


def generation_cost(args) -> PromptCost:
    """Script 4's ``--ren`` per prompt: no pass of its own; a pipeline call of its own (its
    mask is the prompt's length)."""
    return PromptCost(own_call=True)


def prepare(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--ren``: the caption's BOS attention logit scaled, padding keys masked, at every step."""

    def scaled(_index: int, caption: str, _latents) -> PromptCondition:
        condition = caption_condition(pipe, caption)
        length = prompt_length(pipe.tokenizer, caption)
        condition.intervention = functools.partial(scale_attention, pipe.unet, length, args.guidance_scale > 1,
                                                   args.ren_factor, not args.ren_no_mask)
        condition.record = dict(prompt_tokens=length)
        return condition

    return scaled
