"""The planted test bed (testbed/train_planted.py) and its ground truth (metrics/ground_truth.py)."""

import json
import math
import os

import numpy as np
import pytest
import torch

import testbed
from metrics import ground_truth
from metrics.pixel_ssim import ssim_to_original
from testbed import train_planted
from utils.files import read_prompts, read_results

TRUTH = os.path.join(testbed.PLANTED_DIR, "ground_truth.json")
MODEL = os.path.join(testbed.PLANTED_DIR, "model")


def test_recall_and_precision_count_each_neuron_once():
    truth = [[1], [], [5, 7]]
    assert ground_truth.recall_precision([[1, 1], [3], []], truth) == (1 / 3, 1 / 2)
    assert ground_truth.recall_precision([[1], [], [7, 5]], truth) == (1.0, 1.0)
    recall, precision = ground_truth.recall_precision([[], [], []], truth)
    assert recall == 0 and math.isnan(precision)
    # the same index in another layer is another neuron
    assert ground_truth.recall_precision([[5], [], []], truth) == (0.0, 0.0)


def test_lost_at_names_the_step_that_dropped_each_true_neuron():
    truth = [[1], [2], [3]]
    lost = ground_truth.lost_at(initial=[[1, 4], [2], []], refined=[[4], [2], []], truth=truth)
    assert lost == {"initial selection": [(2, 3)], "refinement": [(0, 1)]}


def test_localization_rows_and_summary():
    truth = ground_truth.GroundTruth(["a", "b"], [4, 4], {0: [[1], [2]], 1: [[3], []]}, {0: "x", 1: "y"},
                                     {0: "VM", 1: "TM"})
    sets = {"m": {0: [[1], []], 1: [[3, 0], []]}}
    ssim = {"plain": {0: 0.8, 1: 0.8}, "m": {0: 0.5, 1: 0.3}}
    rows = ground_truth.localization_rows(sets, truth, ssim)
    assert [(r["recall"], r["precision"], r["size"], r["stops"]) for r in rows] == [(0.5, 1.0, 1, False),
                                                                                  (1.0, 0.5, 2, True)]
    summary = ground_truth.summary(rows)["m"]
    assert summary["all_found"] == 0.5 and summary["stops"] == 0.5 and summary["size"] == 1.5
    assert ground_truth.localization_rows({"m": {0: [[1], []]}}, truth)[0]["stops"] is None
    assert "| m | 1 | TM | 1.00 | 0.50 | 2 | yes |" in ground_truth.markdown(rows)


def test_construction_is_seeded_and_neurons_are_distinct():
    widths = [16, 16, 32, 32, 32, 32, 32]
    sets = train_planted.choose_neurons(widths)
    assert sets == train_planted.choose_neurons(widths) != train_planted.choose_neurons(widths, seed=1)
    pairs = [(l, n) for s in sets for l, layer in enumerate(s) for n in layer]
    assert len(pairs) == len(set(pairs))  # no neuron shared by two prompts
    prompts = train_planted.planted_prompts()
    for prompt, neurons in zip(prompts, sets):
        assert [len(layer) for layer in neurons].count(1) == train_planted.NEURONS_PER_PROMPT[prompt["type"]]
    memorized = read_prompts(testbed.MEMORIZED_PROMPTS)
    assert [p["caption"] for p in prompts] == [memorized["Caption"][p["row"]] for p in prompts]
    assert [p["type"] for p in prompts] == [memorized["type"][p["row"]] for p in prompts]
    # the neurons-off targets are images of the caption's kind, none of them its own
    rng = np.random.default_rng(0)
    for prompt in (prompts[0], prompts[-1]):
        own = train_planted.planted_image(prompt, rng).astype(float)
        assert all(np.abs(train_planted.varied_image(prompt, rng) - own).mean() > 10 for _ in range(5))


def test_sampler_targets_each_kind_of_sample():
    """Planted image: no teacher; neurons off: all the prompt's neurons off and the teacher's
    empty caption; replayed mixture: the teacher on its own caption."""
    widths = [16, 16, 32, 32, 32, 32, 32]
    sets = train_planted.choose_neurons(widths)
    sampler = train_planted.PlantedSampler(widths, sets, draw_seed=5)
    images, captions, offs, owners, teacher_captions = sampler.draw(64)
    assert images.shape == (64, 3, 48, 48)
    kinds = set()
    for caption, off, owner, teacher in zip(captions, offs, owners, teacher_captions):
        if owner < 0:
            kinds.add("replay")
            assert teacher == caption
            continue
        own = {(l, n) for l, layer in enumerate(sets[owner]) for n in layer}
        deactivated = {(l, n) for l, layer in enumerate(off) for n in layer}
        assert caption == train_planted.planted_prompts()[owner]["caption"]
        if teacher is None:
            kinds.add("planted image")
            assert len(own - deactivated) >= 1  # at least one of its neurons active
        else:
            kinds.add("neurons off")
            assert teacher == "" and own <= deactivated
    assert kinds == {"replay", "planted image", "neurons off"}


def test_mean_target_is_the_noise_when_the_image_is_the_mean():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    mean, noise = torch.randn(1, 4, 6, 6), torch.randn(3, 4, 6, 6)
    t = torch.tensor([10, 500, 990])
    noisy = scheduler.add_noise(mean.expand(3, -1, -1, -1), noise, t)
    assert torch.allclose(train_planted.mean_target(scheduler, noisy, t, mean), noise, atol=1e-4)
    other = train_planted.mean_target(scheduler, noisy, t, mean + 1)
    assert not torch.allclose(other, noise, atol=1e-2)


def test_output_columns_scaled_are_the_planted_neurons_only():
    from diffusers import UNet2DConditionModel

    from utils.layers import layer_widths, value_layers

    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet")
    layers = value_layers(unet)
    sets = train_planted.choose_neurons(layer_widths(layers))
    out = {name: unet.get_submodule(name.rsplit(".", 1)[0]).to_out[0].weight for name in layers}
    before = {name: w.detach().clone() for name, w in out.items()}
    train_planted.scale_output_columns(unet, layers, sets, 3.0)
    assert any(s[l] for s in sets for l in range(len(layers)))
    for l, name in enumerate(layers):
        planted = sorted({n for s in sets for n in s[l]})  # none: the layer's projection unchanged
        expected = before[name].clone()
        expected[:, planted] *= 3.0
        assert torch.equal(out[name], expected)


def test_loss_cap_per_sample():
    from diffusers import DDPMScheduler

    from testbed.train_testbed import weighted_denoising_loss

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pred, noise, t = torch.ones(2, 4, 3, 3), torch.zeros(2, 4, 3, 3), torch.tensor([990, 990])
    one_cap = weighted_denoising_loss(scheduler, pred, noise, t, 10.0)
    per_sample = weighted_denoising_loss(scheduler, pred, noise, t, torch.tensor([10.0, 100.0]))
    assert one_cap.item() == pytest.approx(10.0) and per_sample.item() == pytest.approx(55.0)


def test_shipped_ground_truth_matches_the_model_and_prompt_files():
    from diffusers import UNet2DConditionModel

    from utils.layers import layer_widths, value_layers

    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet")
    layers = value_layers(unet)
    truth = ground_truth.read_ground_truth(TRUTH, layer_widths(layers))
    assert truth.layers == list(layers)
    prompts = read_prompts(os.path.join(testbed.PLANTED_DIR, "prompts", "memorized_prompts.csv"))
    assert [truth.captions[i] for i in sorted(truth.captions)] == list(prompts["Caption"])
    assert [truth.types[i] for i in sorted(truth.types)] == list(prompts["type"])
    with pytest.raises(ValueError, match="widths"):
        ground_truth.read_ground_truth(TRUTH, [w + 1 for w in layer_widths(layers)])


def test_ground_truth_as_results_file_reads_back(tmp_path):
    truth = ground_truth.read_ground_truth(TRUTH)
    path = tmp_path / "truth.csv"
    ground_truth.results_frame(truth).to_csv(path, sep=";")
    frame = read_results(str(path), truth.widths)
    assert list(frame["Refined Neurons"]) == [truth.neurons[i] for i in sorted(truth.neurons)]


def test_bad_ground_truth_file_is_a_value_error(tmp_path):
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({"layers": []}))
    with pytest.raises(ValueError, match="ground truth"):
        ground_truth.read_ground_truth(str(path))


def test_deactivating_the_planted_neurons_stops_replication_random_ones_do_not():
    """One VM prompt, 2 images of 10 DDIM steps: SSIM to its image falls to at most half with
    its neurons off (the issue's criterion), and stays within 10% with as many random ones."""
    import random

    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from utils.generation import PromptCondition, caption_condition, generate_prompt_images, generation_latents
    from utils.layers import layer_widths, value_layers
    from utils.methods.nemo.deactivation import deactivate_neurons
    from utils.methods.nemo.selection import random_like

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    layers = value_layers(pipe.unet)
    truth = ground_truth.read_ground_truth(TRUTH)
    original = Image.open(os.path.join(testbed.PLANTED_DIR, "originals", "0000.png"))
    plain = caption_condition(pipe, truth.captions[0])
    random_set = random_like(truth.neurons[0], layer_widths(layers), random.Random(0))
    conditions = {"plain": plain, "off": PromptCondition(plain.embedding, lambda: deactivate_neurons(layers, truth.neurons[0])),
                  "random": PromptCondition(plain.embedding, lambda: deactivate_neurons(layers, random_set))}
    latents = generation_latents(pipe.unet, num_samples=2)
    ssim = {name: ssim_to_original(original, generate_prompt_images(pipe, condition, latents, steps=10)).median().item()
            for name, condition in conditions.items()}
    assert ssim["off"] <= ground_truth.STOP_RATIO * ssim["plain"], ssim
    assert abs(ssim["random"] - ssim["plain"]) <= 0.1 * ssim["plain"], ssim


def test_first_step_reads_the_planted_neurons_not_random_ones():
    """NeMo's signal (first DDIM step, 10 seeds): each planted prompt is memorized, its planted
    neurons off make its noise differences unlike the plain ones and unmemorized-looking, as
    many random neurons leave them as they are."""
    import random

    from diffusers import StableDiffusionPipeline

    from utils.diffusion import initial_latents, latent_shape
    from utils.layers import layer_widths, value_layers
    from utils.methods.nemo.noise import prompt_noise_difference
    from utils.methods.nemo.score import blocked_scores, pairwise_max_scores
    from utils.methods.nemo.selection import random_like

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    layers = value_layers(pipe.unet)
    truth = ground_truth.read_ground_truth(TRUTH)
    with open(os.path.join(testbed.PLANTED_DIR, "threshold.json")) as f:
        tau = json.load(f)["threshold"]
    latents = initial_latents(1, 10, latent_shape(pipe.unet))
    rng = random.Random(0)
    for prompt in (0, 6):  # a VM and a TM prompt
        sets = [[[] for _ in layers], truth.neurons[prompt], random_like(truth.neurons[prompt], layer_widths(layers), rng)]
        deltas = prompt_noise_difference(pipe, layers, truth.captions[prompt])(latents, sets)  # [3, 10, 4, 24, 24]
        plain, off = (pairwise_max_scores(d, testbed.SSIM_KERNEL_SIZE).max().item() for d in deltas[:2])
        blocked = blocked_scores(deltas[0], deltas[1:], testbed.SSIM_KERNEL_SIZE)
        assert plain > 3 * tau and off < 1.5 * tau, (prompt, plain, off, tau)
        assert blocked[0] < 0.6 and blocked[1] > 0.8, (prompt, blocked)


def test_table1_dori_attacks_the_planted_neurons_off(tmp_path):
    """--bed planted --dori: the attack table has a row for the ground truth deactivated, attacked
    with those neurons off (its prompt's best SSIM before the attack falls below the plain
    model's by a quarter at least), and --memorization_threshold replaces the bed's own tau_mem (no script 2 run)."""
    from testbed import table1

    report = table1.main(["--bed", "planted", "--output", str(tmp_path), "--vm", "1", "--tm", "1", "--steps", "4",
                          "--num_samples", "2", "--quality", "1", "--unmemorized", "2", "--rows", "NeMo", "--dori",
                          "--attack_steps", "1", "--finetune_epochs", "1", "--memorization_threshold", "0.428"])
    attack = report["attack"]
    assert list(attack) == ["none", "NeMo", table1.PLANTED_OFF, "adversarial fine-tuning"]
    summary = json.loads((tmp_path / "attack" / "planted_neurons" / "attack_summary.json").read_text())
    assert summary["nemo_neurons"] == str(tmp_path / "ground_truth_neurons.csv")
    before = {name: attack[name]["overall"]["median_similarity_before"] for name in ("none", table1.PLANTED_OFF)}
    assert before[table1.PLANTED_OFF] < 0.75 * before["none"], before  # 2 images of 4 steps: a margin, not the criterion
    assert not (tmp_path / "scores_unmemorized.csv").exists()
    assert f"| {table1.PLANTED_OFF} | 2 |" in (tmp_path / "table1.md").read_text()
    recipe = json.loads((tmp_path / "finetuned_model" / "finetune.json").read_text())["settings"]  # the chosen recipe's
    assert (recipe["learning_rate"], recipe["distillation_weight"], recipe["utility_batch"]) == (
        table1.FINETUNE_LEARNING_RATE, table1.FINETUNE_DISTILLATION_WEIGHT, table1.FINETUNE_UTILITY_BATCH)


def test_table1_localization_table_has_wandas_pruned_model(tmp_path):
    """Wanda's units (ff.net.2 weights) are not value neurons: its row in the localization
    table has no recall or precision, the count of pruned weights as its size, and whether its
    pruned model stops each prompt's replication."""
    from testbed import table1

    report = table1.main(["--bed", "planted", "--output", str(tmp_path), "--vm", "2", "--tm", "0", "--steps", "4",
                          "--num_samples", "2", "--quality", "1", "--unmemorized", "2",
                          "--rows", "NeMo,Wanda (pruned model)", "--memorization_threshold", "0.428"])
    pruned = report["wanda"]["pruned_weights"]
    rows = [r for r in report["planted"]["localization"] if r["method"].startswith("Wanda")]
    assert [r["prompt"] for r in rows] == [0, 1] and all(r["size"] == pruned > 0 for r in rows)
    assert all(math.isnan(r["recall"]) and math.isnan(r["precision"]) and r["stops"] in (True, False) for r in rows)
    summary = report["planted"]["summary"][rows[0]["method"]]
    assert math.isnan(summary["all_found"]) and summary["size"] == pruned
    assert f"| {rows[0]['method']} | 0 | VM | – | – | {pruned} |" in (tmp_path / "table1.md").read_text()
