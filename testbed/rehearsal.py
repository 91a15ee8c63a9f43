"""Rehearsal checkpoints: Stable Diffusion's exact published architectures, schedulers and
tokenizers with seeded random weights, so that every command can run at the real shapes and
compute cost without the weights (which cannot be downloaded here).

    python -m testbed.rehearsal sd14 sd2-base sd21 sscd clip-b32 --output DIR

writes DIR/sd14, DIR/sd2-base, DIR/sd21 (diffusers folders every script loads with
``-v FOLDER``), DIR/sscd.torchscript.pt (a ResNet-50-shaped TorchScript stand-in for
``sscd_disc_mixup``: [n, 3, 320, 320] -> [n, 512], L2-normalized) and DIR/clip-b32 (a
CLIPModel + CLIPProcessor folder shaped like openai/clip-vit-base-patch32). Their images are
noise; their shapes, parameter counts and token ids are the real ones.

The configs below are the ``config.json`` files of the hub repositories named beside them
(CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-2-base,
stabilityai/stable-diffusion-2-1), without the ``_class_name``/``_diffusers_version``
bookkeeping. SD v1.5 has SD v1.4's architecture; SD 2 (768 px) that of SD 2.1.
The tokenizer is CLIP's BPE vocabulary as the ``open-clip-torch`` wheel ships it
(``open_clip/bpe_simple_vocab_16e6.txt.gz``), turned into vocab.json/merges.txt the way
CLIP's own tokenizer builds its vocabulary; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("testbed.rehearsal")

# ---------------------------------------------------------------------------------------
# SD v1.4 (CompVis/stable-diffusion-v1-4: unet/, vae/, text_encoder/ (openai/clip-vit-large-patch14's
# text tower), scheduler/, tokenizer/)
SD14_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD14_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD14_TEXT_ENCODER_CONFIG = {  # CLIP ViT-L/14's text transformer
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD14_SCHEDULER_CONFIG = {  # PNDMScheduler; the suite swaps in DDIM from the same config
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD14_TOKENIZER_CONFIG = {
    "do_lower_case": True,
    "model_max_length": 77,
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}

# ---------------------------------------------------------------------------------------
# SD 2-base (stabilityai/stable-diffusion-2-base): 512 px, epsilon; OpenCLIP ViT-H/14's text
# tower without its last layer (23 of 24), linear proj_in/proj_out, per-level head widths.
SD2_BASE_UNET_CONFIG = {
    **SD14_UNET_CONFIG,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "use_linear_projection": True,
    "upcast_attention": False,
}
SD2_TEXT_ENCODER_CONFIG = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD2_BASE_SCHEDULER_CONFIG = {**SD14_SCHEDULER_CONFIG, "prediction_type": "epsilon"}  # PNDMScheduler
SD2_TOKENIZER_CONFIG = {**SD14_TOKENIZER_CONFIG, "pad_token": "!"}  # SD 2 pads with "!" (id 0)

# ---------------------------------------------------------------------------------------
# SD 2.1 (stabilityai/stable-diffusion-2-1): 768 px (96x96 latents), v-prediction, attention
# upcast to fp32; text encoder and tokenizer as SD 2-base.
SD21_UNET_CONFIG = {**SD2_BASE_UNET_CONFIG, "sample_size": 96, "upcast_attention": True}
SD21_VAE_CONFIG = {**SD14_VAE_CONFIG, "sample_size": 768}
SD21_SCHEDULER_CONFIG = {  # DDIMScheduler
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler_class: str
    scheduler: dict
    tokenizer: dict


CHECKPOINTS = {
    "sd14": Checkpoint("CompVis/stable-diffusion-v1-4", SD14_UNET_CONFIG, SD14_VAE_CONFIG, SD14_TEXT_ENCODER_CONFIG,
                       "PNDMScheduler", SD14_SCHEDULER_CONFIG, SD14_TOKENIZER_CONFIG),
    "sd2-base": Checkpoint("stabilityai/stable-diffusion-2-base", SD2_BASE_UNET_CONFIG, SD14_VAE_CONFIG,
                           SD2_TEXT_ENCODER_CONFIG, "PNDMScheduler", SD2_BASE_SCHEDULER_CONFIG, SD2_TOKENIZER_CONFIG),
    "sd21": Checkpoint("stabilityai/stable-diffusion-2-1", SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD2_TEXT_ENCODER_CONFIG,
                       "DDIMScheduler", SD21_SCHEDULER_CONFIG, SD2_TOKENIZER_CONFIG),
}
# Parameters of the real checkpoints' components (their safetensors files), which the
# rehearsal's must match.
PUBLISHED_PARAMETERS = {
    "sd14": dict(unet=859_520_964, vae=83_653_863, text_encoder=123_060_480),
    "sd2-base": dict(unet=865_910_724, vae=83_653_863, text_encoder=340_387_840),
    "sd21": dict(unet=865_910_724, vae=83_653_863, text_encoder=340_387_840),
}
STAND_INS = ("sscd", "clip-b32")
SSCD_FILE = "sscd.torchscript.pt"
SSCD_DIM = 512  # sscd_disc_mixup's descriptor width
# openai/clip-vit-base-patch32 (config.json): text 512 wide x 12 layers, vision ViT-B/32 at 224 px
CLIP_B32_TEXT_CONFIG = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                        "hidden_act": "quick_gelu", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
CLIP_B32_VISION_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                          "num_hidden_layers": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}
CLIP_B32_PROJECTION_DIM = 512
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's preprocessing (preprocessor_config.json)
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
SEED = 0
BPE_MERGES = 49152 - 256 - 2  # CLIP's tokenizer keeps the first 48,894 merges of the file


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map of the 256 bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def build_tokenizer(directory: str, config: dict):
    """CLIP's tokenizer (49,408 tokens, from open_clip's BPE file) with ``config``'s special
    tokens, written to and read from ``directory``."""
    import open_clip

    from testbed.components import write_bpe_tokenizer

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:BPE_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    characters = list(_bytes_to_unicode().values())
    vocab = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return write_bpe_tokenizer(directory, vocab, merges, config)


def seeded_weights(build, seed: int, dtype):
    """``build()`` under ``accelerate.init_empty_weights`` (no memory, no init), then each
    parameter filled from one seeded generator: matrices and kernels N(0, 1/fan_in), norm
    scales 1, biases 0 (a plain random init of 860M parameters on 2 cores takes minutes)."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights():
        model = build()
    generator = torch.Generator().manual_seed(seed)
    for name, param in list(model.named_parameters()):
        if param.dim() >= 2:
            value = torch.randn(param.shape, generator=generator) / (param[0].numel() ** 0.5)
        elif name.endswith("bias"):
            value = torch.zeros(param.shape)
        else:
            value = torch.ones(param.shape)
        set_module_tensor_to_device(model, name, "cpu", value=value.to(dtype), dtype=dtype)
    return model.eval()


def build_pipeline(name: str, seed: int = SEED, dtype=None):
    """The ``StableDiffusionPipeline`` of checkpoint ``name`` with seeded random weights
    (float16 unless ``dtype`` is given), its tokenizer built in a temporary folder."""
    import tempfile

    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = CHECKPOINTS[name]
    dtype = dtype or torch.float16
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_tokenizer(directory, spec.tokenizer)
    return StableDiffusionPipeline(
        unet=seeded_weights(lambda: UNet2DConditionModel(**spec.unet), seed, dtype),
        vae=seeded_weights(lambda: AutoencoderKL(**spec.vae), seed + 1, dtype),
        text_encoder=seeded_weights(lambda: CLIPTextModel(CLIPTextConfig(**spec.text_encoder)), seed + 2, dtype),
        tokenizer=tokenizer,
        scheduler=getattr(diffusers, spec.scheduler_class).from_config(spec.scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_checkpoint(name: str, folder: str, seed: int = SEED) -> None:
    """The rehearsal diffusers folder of ``name`` (fp16 safetensors, about 2.6 GB for SD v1.4)."""
    from utils.outputs import atomic_path

    pipe = build_pipeline(name, seed)
    with atomic_path(folder) as temporary:
        pipe.save_pretrained(temporary, safe_serialization=True)


def sscd_stand_in(seed: int = SEED):
    """A TorchScript module shaped like ``sscd_disc_mixup``: ResNet-50 trunk, 2048 -> 512
    linear head, L2-normalized: [n, 3, 320, 320] -> [n, 512]."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import resnet50

    class Descriptor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = resnet50(num_classes=SSCD_DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.trunk(x), dim=1)

    torch.manual_seed(seed)
    return torch.jit.script(Descriptor().eval())


def write_sscd(path: str, seed: int = SEED) -> None:
    from utils.outputs import atomic_path

    model = sscd_stand_in(seed)
    with atomic_path(path) as temporary:
        model.save(temporary)


def write_clip_b32(folder: str, seed: int = SEED) -> None:
    """A CLIPModel + CLIPProcessor folder shaped like openai/clip-vit-base-patch32 (fp32)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from utils.outputs import atomic_path

    config = CLIPConfig(text_config=CLIP_B32_TEXT_CONFIG, vision_config=CLIP_B32_VISION_CONFIG,
                        projection_dim=CLIP_B32_PROJECTION_DIM)
    model = seeded_weights(lambda: CLIPModel(config), seed, torch.float32)
    model.logit_scale.data.fill_(4.6052)  # CLIP's log(100)
    images = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                image_mean=CLIP_IMAGE_MEAN, image_std=CLIP_IMAGE_STD)
    with atomic_path(folder) as temporary:
        tokenizer = build_tokenizer(temporary, SD14_TOKENIZER_CONFIG)
        model.save_pretrained(temporary)
        CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(temporary)


def output_path(output: str, name: str) -> str:
    """Where ``name`` (a checkpoint or a stand-in) is written under ``output``."""
    return os.path.join(output, SSCD_FILE if name == "sscd" else name)


def write(names: list[str], output: str, seed: int = SEED) -> dict[str, str]:
    """Write each of ``names`` under ``output`` unless it is there already; name -> path."""
    paths = {}
    for name in names:
        path = output_path(output, name)
        if not os.path.exists(path):
            logger.info("writing %s -> %s", name, path)
            if name in CHECKPOINTS:
                write_checkpoint(name, path, seed)
            elif name == "sscd":
                write_sscd(path, seed)
            else:
                write_clip_b32(path, seed)
        paths[name] = path
    return paths


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=(*CHECKPOINTS, *STAND_INS), help="what to write")
    parser.add_argument("--output", required=True, help="folder to write them to (existing ones are kept)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = write(args.names, args.output, args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
