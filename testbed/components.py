"""Tiny Stable-Diffusion-shaped components built offline from configs.

Used by the tests (random weights) and by ``testbed/train_testbed.py`` (trained
weights). The U-Net has SD v1.4's block types and two layers per block, so it has
the same 7 cross-attention value layers as SD v1.x, only narrower.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD v1.4's scheduler config (CompVis/stable-diffusion-v1-4, scheduler/scheduler_config.json).
SD14_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# CLIP's context length, also SD's tokenizer.model_max_length.
MAX_TOKENS = 77


@dataclass(frozen=True)
class TinySize:
    """Widths of a tiny SD-shaped model. ``latent_size`` is the U-Net's sample size."""

    unet_channels: tuple[int, int, int, int] = (8, 16, 16, 16)
    norm_groups: int = 4
    attention_heads: int = 2
    text_width: int = 16
    text_layers: int = 1
    vae_channels: tuple[int, ...] = (8, 8)
    latent_size: int = 24  # the smallest latent MS-SSIM accepts (3 scales, kernel 5)
    # Self-attention at the first (largest) level costs the most on the CPU; cross-attention
    # (and so attn2.to_v) is kept everywhere.
    cross_attention_only_first_level: bool = False


def build_tokenizer(words: list[str], directory: str) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary covers ``words``, written to ``directory``.

    Each word gets a chain of merges, so common words become single tokens.
    """
    vocab = [START_TOKEN, END_TOKEN]
    merges: list[tuple[str, str]] = []
    chars = sorted({c for w in words for c in w.lower()})
    vocab += chars + [c + "</w>" for c in chars]
    known = set(vocab)
    for word in sorted({w.lower() for w in words}):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            pair = (merged, piece)
            merged = merged + piece
            if merged not in known:
                known.add(merged)
                vocab.append(merged)
                merges.append(pair)
    return write_bpe_tokenizer(directory, vocab, merges, dict(
        model_max_length=MAX_TOKENS, pad_token=END_TOKEN, bos_token=START_TOKEN, eos_token=END_TOKEN, unk_token=END_TOKEN))


def write_bpe_tokenizer(directory: str, vocab: list[str], merges: list[tuple[str, str]], config: dict) -> CLIPTokenizer:
    """A CLIP BPE tokenizer (token ids in ``vocab`` order, ``merges`` by rank, special tokens
    in ``config``) written to ``directory`` and read back."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    # from_pretrained reads vocab.json + merges.txt in transformers 4 and 5 alike.
    return CLIPTokenizer.from_pretrained(directory)


def build_text_encoder(vocab_size: int, size: TinySize) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_width,
        intermediate_size=4 * size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.attention_heads,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_unet(size: TinySize) -> UNet2DConditionModel:
    """SD v1.4's U-Net layout: 3 cross-attention down blocks + 1 plain, mid, mirrored up."""
    first = size.cross_attention_only_first_level
    return UNet2DConditionModel(
        sample_size=size.latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=size.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=size.text_width,
        attention_head_dim=size.attention_heads,
        norm_num_groups=size.norm_groups,
        only_cross_attention=[first, False, False, False],
    )


def build_vae(size: TinySize) -> AutoencoderKL:
    n = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        norm_num_groups=size.norm_groups,
        sample_size=size.latent_size * 2 ** (n - 1),
    )


def build_components(words: list[str], directory: str, size: TinySize = TinySize(), seed: int = 0) -> dict:
    """Seeded random components of a tiny SD pipeline (keys as in ``StableDiffusionPipeline``)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words, os.path.join(directory, "tokenizer"))
    return dict(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(len(tokenizer), size),
        unet=build_unet(size),
        vae=build_vae(size),
        scheduler=DDIMScheduler(**SD14_SCHEDULER_CONFIG),
    )
