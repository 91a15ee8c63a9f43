"""Dori's attack and adversarial fine-tuning (Kowalczuk et al.) on the tiny pipeline and the test bed."""

import importlib
import json
import os
import random

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

import testbed
from experiments import finetune
from metrics.pixel_ssim import ssim_to_original
from utils.diffusion import encode_prompts
from utils.files import read_prompts
from utils.generation import PromptCondition, caption_condition, generate_prompt_images, generation_latents, unchanged
from utils.images import original_images
from utils.layers import value_layers
from utils.methods.dori import attack as dori, finetuning
from utils.methods.nemo.deactivation import deactivate_neurons
from utils.models import load_pipeline

finetune_script = importlib.import_module("9_adversarial_finetuning")


def no_hooks(module):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_attack_lowers_its_objective_and_leaves_the_model_alone(tiny_pipe):
    weights = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    target = dori.image_latents(tiny_pipe, [Image.new("RGB", (48, 48), (200, 30, 30))])  # [1, 4, 24, 24]
    initial = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["a red cat"])
    found = dori.attack(tiny_pipe, target, initial, steps=30, batch=8, learning_rate=0.1)
    assert len(found.losses) == 30 and found.unet_sample_forwards == 240
    early, late = sum(found.losses[:10]) / 10, sum(found.losses[-10:]) / 10
    assert late < early, found.losses
    assert not torch.equal(found.embedding, initial)
    assert all(torch.equal(v, weights[k]) for k, v in tiny_pipe.unet.state_dict().items())
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_attack_removes_its_hooks_when_it_raises(tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    wrong = torch.zeros(1, 3, 24, 24)  # latents need 4 channels: the U-Net raises
    initial = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["a red cat"])
    with pytest.raises(RuntimeError):
        dori.attack(tiny_pipe, wrong, initial, steps=2, intervention=lambda: deactivate_neurons(
            layers, [[0]] + [[]] * 6))
    assert no_hooks(tiny_pipe.unet) and all(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_attack_prompt_scores_the_images_before_and_after_with_the_given_similarity(tiny_pipe):
    original = Image.new("RGB", (48, 48), (200, 30, 30))
    condition = caption_condition(tiny_pipe, "a red cat")
    latents = generation_latents(tiny_pipe.unet, num_samples=2)  # [2, 4, 24, 24]
    scored = []
    similarity = lambda image, images: scored.append(images) or ssim_to_original(image, images)
    outcome = dori.attack_prompt(tiny_pipe, original, condition, latents, similarity, steps=2, batch=2,
                                 generation_steps=2)
    found = dori.attack(tiny_pipe, dori.image_latents(tiny_pipe, [original]), condition.embedding, steps=2, batch=2)
    assert torch.equal(outcome.embedding, found.embedding) and len(outcome.losses) == 2
    assert len(scored) == 2 and scored[1] is outcome.images and len(outcome.images) == 2
    assert outcome.similarity_before == ssim_to_original(original, scored[0]).max().item()
    assert outcome.similarity_after == ssim_to_original(original, outcome.images).max().item()
    assert outcome.l2 > 0 and -1 <= outcome.cosine <= 1


def test_surrogate_targets_are_shuffled_with_the_seed(tiny_pipe, tmp_path):
    captions = ["a red cat", "the blue dog", "a green tree"]
    prompts = []
    for row, caption in enumerate(captions):
        path = str(tmp_path / f"{row:04d}.png")
        Image.new("RGB", (48, 48), (60 * row, 30, 30)).save(path)
        prompts.append((row, caption, path))
    targets = finetuning.surrogate_targets(tiny_pipe, unchanged(tiny_pipe), prompts, steps=2, seed=1)
    order = list(range(len(captions)))
    random.Random(1).shuffle(order)
    for target, row in zip(targets, order):
        assert torch.equal(target.embedding, caption_condition(tiny_pipe, captions[row]).embedding)
        assert target.latent.shape == target.surrogate.shape == (1, 4, 24, 24)


def test_an_embedding_found_from_another_prompt_reproduces_a_memorized_image():
    """On the shipped test bed: start from a held-out caption, attack towards a VM image."""
    pipe = load_pipeline(testbed.MODEL_DIR, torch.device("cpu"))
    original = Image.open(original_images(testbed.ORIGINALS_DIR)[0]).convert("RGB")
    held_out = read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"][0]
    initial = encode_prompts(pipe.tokenizer, pipe.text_encoder, [held_out])
    latents = generation_latents(pipe.unet, num_samples=2)
    generate = lambda embedding: generate_prompt_images(pipe, PromptCondition(embedding), latents, steps=25)
    before = ssim_to_original(original, generate(initial)).max().item()
    found = dori.attack(pipe, dori.image_latents(pipe, [original]), initial, seed=0)
    after = ssim_to_original(original, generate(found.embedding)).max().item()
    assert before < 0.3 and after > 0.5, (before, after)


def test_finetuning_changes_the_unet_and_the_folder_reloads(tiny_model_dir, tmp_path):
    from testbed.synthetic_data import write_ordinary_pairs

    prompts = tmp_path / "memorized.csv"
    prompts.write_text(";Caption;type\n0;a red cat;VM\n")
    originals = tmp_path / "originals"
    originals.mkdir()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(originals / "0000.png")
    results = tmp_path / "results.csv"
    results.write_text(";Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM\n"
                       "0;a red cat;u;[[0], [], [], [], [], [], []];0.3;[[0], [], [], [], [], [], []];0.3\n")
    pairs = write_ordinary_pairs(str(tmp_path / "pairs"), 4, seed=0, draw_seed=0)
    out = str(tmp_path / "tuned")
    summary = finetune_script.main(["-v", tiny_model_dir, "-d", str(prompts), "--originals", str(originals),
                                    "-f", str(results), "--utility_data", pairs, "-o", out, "--epochs", "1",
                                    "--attack_steps", "2", "--learning_rate", "1e-3"])
    assert summary["updates"] == 1 and json.load(open(os.path.join(out, finetune.SUMMARY_NAME)))["rows"] == [0]
    before = StableDiffusionPipeline.from_pretrained(tiny_model_dir).unet.state_dict()
    after = StableDiffusionPipeline.from_pretrained(out).unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.fixture()
def memorized_with_original(tmp_path):
    prompts = tmp_path / "memorized.csv"
    prompts.write_text(";Caption;type\n0;a red cat;VM\n1;the blue dog;VM\n")
    originals = tmp_path / "originals"
    originals.mkdir()
    for row, colour in ((0, (200, 30, 30)), (1, (30, 30, 200))):
        Image.new("RGB", (48, 48), colour).save(originals / f"{row:04d}.png")
    return str(prompts), str(originals)


def test_script8_writes_a_resumable_row_per_prompt_and_the_success_rate(tiny_model_dir, memorized_with_original, tmp_path):
    prompts, originals = memorized_with_original
    attack_script = importlib.import_module("8_attack_mitigation")
    args = ["-v", tiny_model_dir, "-d", prompts, "--originals", originals, "-o", str(tmp_path / "attack"),
            "--similarity", "pixel_ssim", "--attack_steps", "2", "-n", "2", "--steps", "2"]
    attack_script.main([*args, "--limit", "1"])
    summary = attack_script.main([*args, "--resume"])  # only the second prompt is attacked now
    rows = open(tmp_path / "attack" / "attack.csv").read().splitlines()
    assert len(rows) == 3 and summary["VM"]["prompts"] == 2
    assert 0 <= summary["overall"]["replicated_after"] <= 1 and summary["overall"]["median_l2"] > 0
    assert sorted(os.listdir(tmp_path / "attack" / "embeddings")) == ["0000.pt", "0001.pt"]


def test_triggers_analysis_writes_json(tiny_model_dir, memorized_with_original, tmp_path):
    from experiments import locality

    prompts, originals = memorized_with_original
    result = locality.main(["triggers", "-v", tiny_model_dir, "-d", prompts, "--originals", originals, "--starts", "2",
                            "--attack_steps", "2", "--similarity", "pixel_ssim", "--replication_threshold", "-1",
                            "-o", str(tmp_path)])
    assert result["replicating"] == 2 and len(result["similarities"]) == 2
    assert len(result["activation_discrepancy"]["triggers"]) == 7
    assert result["trigger_distances"]["n"] == 1 and (tmp_path / "triggers.png").exists()


def test_finetuning_erases_a_vm_prompt_and_pushes_the_attack_far_from_it(tmp_path):
    """Reduced form of the success-rate table on the shipped test bed's first VM prompt.

    One prompt's fine-tuning erases what the prompt itself generates, and an attack that still
    finds the image has to move its embedding several times further than on the plain model;
    the rate at which the attack fails needs all 12 prompts (BENCHMARKS.md, Dori).
    """
    from testbed.synthetic_data import write_ordinary_pairs

    attack_script = importlib.import_module("8_attack_mitigation")
    results = str(tmp_path / "results.csv")
    importlib.import_module("3_detect_memorized_neurons").main([
        "-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "-o", results, "--limit", "1",
        "--statistics", os.path.join(testbed.TESTBED_DIR, "statistics.pt"), "--memorization_threshold", "0.32",
        "--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE)])
    tuned = str(tmp_path / "tuned")
    finetune_script.main(["-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "--originals", testbed.ORIGINALS_DIR,
                          "-f", results, "--utility_data", write_ordinary_pairs(str(tmp_path / "pairs"), 16, 0, 3),
                          "-o", tuned, "--limit", "1", "--learning_rate", "1e-4", "--epochs", "15",
                          "--attack_steps", "20"])
    attacked = {}
    for name, model in (("plain", testbed.MODEL_DIR), ("tuned", tuned)):
        attacked[name] = attack_script.main(["-v", model, "-d", testbed.MEMORIZED_PROMPTS, "--originals",
                                             testbed.ORIGINALS_DIR, "-o", str(tmp_path / name), "--limit", "1",
                                             "--similarity", "pixel_ssim", "-n", "4", "--steps", "25"])["overall"]
    plain, tuned_result = attacked["plain"], attacked["tuned"]
    assert plain["replicated_before"] == 1.0 and plain["replicated_after"] == 1.0
    assert tuned_result["replicated_before"] == 0.0, attacked
    assert tuned_result["median_similarity_before"] < plain["median_similarity_before"] - 0.3, attacked
    assert tuned_result["median_l2"] > 3 * plain["median_l2"], attacked
