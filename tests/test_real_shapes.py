"""Stable Diffusion at its real shapes, without its weights: the rehearsal checkpoints of
testbed/rehearsal.py (SD v1.4, SD 2-base, SD 2.1) and CI's reduced pass of every command on
SD v1.4's (benchmarks/real_size.reduced_pass: one prompt, 1-2 seeds, one DDIM step, script 3
and 6 with --smoke).

The folders are written once per session under $NEMO_REHEARSAL_DIR (default: a pytest
temporary folder), about 2-3 GB each. Everything runs in CI; BENCHMARKS.md
says what it costs. Script 9 at real size is the pass's largest: its peak is about 15 GiB
(AdamW over 860M float32 weights).
"""

import importlib
import json
import math
import os

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks import real_size
from testbed import rehearsal
from tests.conftest import UPSTREAM, upstream_file
from utils.diffusion import encode_prompts, latent_shape, predicted_noise
from utils.files import read_results
from utils.hooks import edit_outputs
from utils.layers import layer_widths, value_layers
from utils.methods.nemo.noise import prompt_noise_difference
from utils.models import load_pipeline

SD_VALUE_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280]


def empty_components(name: str) -> dict:
    """The checkpoint's U-Net, VAE and text encoder without memory (meta tensors)."""
    spec = rehearsal.CHECKPOINTS[name]
    with init_empty_weights():
        return dict(unet=UNet2DConditionModel(**spec.unet), vae=AutoencoderKL(**spec.vae),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**spec.text_encoder)))


@pytest.mark.parametrize("name", list(rehearsal.CHECKPOINTS))
def test_parameter_counts_are_the_real_checkpoints(name):
    counts = {part: sum(p.numel() for p in module.parameters()) for part, module in empty_components(name).items()}
    assert counts == rehearsal.PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("name", list(rehearsal.CHECKPOINTS))
def test_value_layers_are_found_at_real_width(name):
    unet = empty_components(name)["unet"]
    layers = value_layers(unet)
    assert layer_widths(layers) == SD_VALUE_WIDTHS
    text_width = rehearsal.CHECKPOINTS[name].text_encoder["hidden_size"]
    assert {layer.in_features for layer in layers.values()} == {text_width}
    first = unet.down_blocks[0].attentions[0]
    assert isinstance(first.proj_in, torch.nn.Linear) == (name != "sd14")  # SD 2: linear projections
    assert first.transformer_blocks[0].attn2.heads == (8 if name == "sd14" else 5)  # SD 2: heads per level


def test_tokenizer_gives_clips_ids(tmp_path):
    tokenizer = rehearsal.build_tokenizer(str(tmp_path / "v1"), rehearsal.SD14_TOKENIZER_CONFIG)
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 49407, 49407]
    sd2 = rehearsal.build_tokenizer(str(tmp_path / "v2"), rehearsal.SD2_TOKENIZER_CONFIG)
    assert sd2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]  # "!" pads


@pytest.fixture(scope="session")
def rehearsal_dir(tmp_path_factory) -> str:
    return os.environ.get("NEMO_REHEARSAL_DIR") or str(tmp_path_factory.mktemp("rehearsal"))


def written(folder: str, name: str) -> str:
    return rehearsal.write([name], folder)[name]


@torch.no_grad()
def test_sd21_folder_loads_and_reads_v_as_noise(rehearsal_dir):
    """SD 2.1 at 768 px through the ordinary loading code: DDIM keeps v-prediction, and
    the noise difference is sqrt(a_t) v + sqrt(1 - a_t) x_T - x_T at 96x96 (one U-Net call)."""
    pipe = load_pipeline(written(rehearsal_dir, "sd21"), torch.device("cpu"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert latent_shape(pipe.unet) == (4, 96, 96)
    layers = value_layers(pipe.unet)
    assert layer_widths(layers) == SD_VALUE_WIDTHS
    noise = prompt_noise_difference(pipe, layers, "a photo of a cat", normalized=False)
    assert noise.text_embedding.shape == (1, 77, 1024)
    x = torch.randn(1, 4, 96, 96, generator=torch.Generator().manual_seed(0))
    outputs = []
    with edit_outputs({"unet": pipe.unet}, lambda output, _name: outputs.append(output.sample)):
        delta = noise(x)[0]
    expected = predicted_noise(pipe.scheduler, outputs[0], x, noise.timestep) - x
    alpha_bar = pipe.scheduler.alphas_cumprod[int(noise.timestep)]
    torch.testing.assert_close(expected, alpha_bar.sqrt() * outputs[0] + ((1 - alpha_bar).sqrt() - 1) * x)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)


def test_sd2_base_folder_loads_at_real_shapes(rehearsal_dir):
    pipe = load_pipeline(written(rehearsal_dir, "sd2-base"), torch.device("cpu"))
    assert pipe.scheduler.config.prediction_type == "epsilon" and latent_shape(pipe.unet) == (4, 64, 64)
    assert encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a cat"]).shape == (1, 77, 1024)


# ---------------------------------------------------------------------------------------
# CI's reduced pass on SD v1.4's rehearsal, every command in order.

@pytest.fixture(scope="module")
def real_pass(rehearsal_dir, tmp_path_factory) -> dict:
    upstream_file("memorized_laion_prompts.csv")
    upstream_file("statistics_additional_laion_prompts_v1_4.pt")
    paths = rehearsal.write(["sd14", "sscd", "clip-b32"], rehearsal_dir)
    work = str(tmp_path_factory.mktemp("real_pass"))
    inputs = real_size.prepare_inputs(UPSTREAM, work)
    commands = real_size.reduced_pass(paths["sd14"], inputs, paths["sscd"], paths["clip-b32"], work, ["--device", "cpu"])
    return dict(work=work, inputs=inputs, model=paths["sd14"], commands={name: (m, a) for name, m, a in commands})


COMMANDS = [name for name, _, _ in real_size.reduced_pass("M", dict.fromkeys(("prompts", "originals", "utility",
                                                                             "statistics"), "x"), "s", "c", "w")]


@pytest.mark.parametrize("name", COMMANDS)
def test_reduced_pass_command_runs_at_real_shapes(real_pass, name):
    module, argv = real_pass["commands"][name]
    importlib.import_module(module).main(argv)
    work = real_pass["work"]
    if name == "script 1":
        data = torch.load(os.path.join(work, "statistics.pt"), weights_only=True)
        assert [len(m) for m in data["means"]] == SD_VALUE_WIDTHS
    elif name == "script 3":
        row = read_results(os.path.join(work, "results.csv"), SD_VALUE_WIDTHS).iloc[0]
        assert row["Sets Scored"] >= 2  # an initial-selection step and a refinement step
        assert len(row["Initial Neurons"]) == 7
    elif name.startswith("script 4") or name == "script 5 reloaded":
        folder = os.path.join(work, "images", name.removeprefix("script 4 ") if name.startswith("script 4") else "pruned")
        images = [f for f in os.listdir(folder) if f.endswith((".png", ".jpg"))]
        assert images and Image.open(os.path.join(folder, images[0])).size == (512, 512)
    elif name == "script 5":
        pruned = load_pipeline(os.path.join(work, "pruned"), torch.device("cpu"))
        for layer, neurons in zip(value_layers(pruned.unet).values(), real_size.PRUNED_NEURONS):
            assert all(not layer.weight[n].any() for n in neurons) and layer.weight.any()
    elif name == "script 6":
        table = json.load(open(os.path.join(work, "table1", "table1.json")))
        assert {"all neurons active", "NeMo"} <= set(table["rows"])
    elif name == "script 8":
        assert os.path.exists(os.path.join(work, "attack", "attack.csv"))
    elif name == "script 9":
        summary = json.load(open(os.path.join(work, "finetuned", "finetune.json")))
        assert summary["updates"] == 1 and all(math.isfinite(summary["history"][0][k])
                                               for k in ("attack_loss", "adversarial_loss", "utility_loss"))
        weights = [safe_open(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), "pt")
                   for folder in (real_pass["model"], os.path.join(work, "finetuned"))]
        key = "conv_in.weight"  # every U-Net weight is updated
        assert not torch.equal(weights[0].get_tensor(key), weights[1].get_tensor(key))
    elif name in ("SSCD_Orig", "SSCD_Gen", "A_CLIP"):
        output = {"SSCD_Orig": "sscd_orig.json", "SSCD_Gen": "sscd_gen.json", "A_CLIP": "alignment.json"}[name]
        assert json.load(open(os.path.join(work, output)))
