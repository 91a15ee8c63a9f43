"""The shipped test bed memorizes, and NeMo finds and removes it (reduced end to end)."""

import importlib
import json
import os

import pandas as pd
import pytest
import torch
from PIL import Image

import testbed
from metrics.core import median
from metrics.pixel_ssim import ssim_to_original
from utils.diffusion import initial_latents, latent_shape
from utils.files import read_prompts, read_threshold
from utils.generation import generate_prompt_images, generation_latents, read_records
from utils.images import original_images
from utils.layers import count_neurons, value_layers
from utils.methods.nemo.mitigation import with_neurons
from utils.methods.nemo.noise import normalize_maps, prompt_noise_difference
from utils.methods.nemo.score import memorization_score
from utils.models import load_pipeline

KERNEL = ["--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE)]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(testbed.MODEL_DIR, torch.device("cpu"))


@pytest.fixture(scope="module")
def threshold():
    return read_threshold(os.path.join(testbed.TESTBED_DIR, "threshold.json"))


def test_shipped_model_loads_with_seven_value_layers(pipe):
    assert len(value_layers(pipe.unet)) == 7 and pipe.unet.config.sample_size == 24


def test_memorized_prompt_is_detected(pipe, threshold):
    layers = value_layers(pipe.unet)
    latents = initial_latents(1, 10, latent_shape(pipe.unet))
    score = lambda caption: memorization_score(prompt_noise_difference(pipe, layers, caption)(latents)[0],
                                               testbed.SSIM_KERNEL_SIZE)
    vm = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    unmemorized = read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"][:3]
    assert score(vm) > threshold > max(score(c) for c in unmemorized)


def test_memorized_prompt_is_localized_and_its_neurons_change_the_images(pipe, threshold, tmp_path):
    results = str(tmp_path / "results.csv")
    importlib.import_module("3_detect_memorized_neurons").main([
        "-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "-o", results, "--limit", "1",
        "--statistics", os.path.join(testbed.TESTBED_DIR, "statistics.pt"),
        "--memorization_threshold", str(threshold), *KERNEL])
    row = pd.read_csv(results, sep=";").iloc[0]
    neurons = json.loads(row["Refined Neurons"])
    assert 0 < count_neurons(neurons) < count_neurons(json.loads(row["Initial Neurons"]))
    caption = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    latents = generation_latents(pipe.unet, num_samples=4)
    plain, nemo = (generate_prompt_images(pipe, with_neurons(pipe, {0: blocked})(0, caption, latents), latents,
                                          steps=20) for blocked in (None, neurons))
    original = Image.open(original_images(testbed.ORIGINALS_DIR)[0])
    copied, mitigated = (median(ssim_to_original(original, images)) for images in (plain, nemo))
    assert copied > 0.6 and mitigated < 0.6 * copied, (copied, mitigated)


def test_training_data_matches_the_shipped_prompt_files_and_originals():
    """The U-Net trains on the images saved as originals and never sees a held-out caption."""
    import numpy as np

    from testbed import synthetic_data as data
    from testbed.train_testbed import unet_sampler

    sampler = unet_sampler()
    memorized = read_prompts(testbed.MEMORIZED_PROMPTS)
    for index, caption in enumerate(memorized["Caption"]):
        if memorized["type"][index] == "VM":
            vm = data.VM_NAMES.index(caption.split()[2])
            original = np.asarray(Image.open(os.path.join(testbed.ORIGINALS_DIR, f"{index:04d}.png")).convert("RGB"))
            assert np.array_equal(sampler.vm_images[vm], original), caption
    trained = {data.ordinary_caption(combo) for combo in sampler.ordinary}
    held_out = set(read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"])
    assert held_out and not trained & held_out
    assert trained == set(read_prompts(testbed.ADDITIONAL_PROMPTS)["Caption"])


def test_table1_demo_runs_every_row_end_to_end_reduced(tmp_path, capsys):
    from experiments import plan
    from experiments.rows import FINETUNED, WANDA, table_rows
    from testbed import table1
    from utils.methods import DETECTORS

    report = table1.main(["--output", str(tmp_path), "--vm", "1", "--tm", "1", "--steps", "4", "--num_samples", "2",
                          "--quality", "2", "--unmemorized", "3"])
    rows = report["rows"]
    expected = []
    for setting in table_rows():
        if setting.model != FINETUNED:  # the adversarial fine-tuning row comes with --dori
            expected += [setting.name] + ([f"{setting.name}, prompts in P"] if setting.model == WANDA else [])
    assert list(rows) == expected
    plain = rows["all neurons active"]["SSIM_Orig"]["overall"]["median"]
    for mitigated in ("NeMo", "prompt embedding adjustment (Wen)"):
        assert rows[mitigated]["SSIM_Orig"]["overall"]["median"] < plain, mitigated
    assert rows["NeMo"]["neurons"]["overall"]["median"] > 0 == rows["attention scaling (Ren)"]["neurons"]["overall"]["median"]
    assert rows["random neurons"].get("quality") is None and rows["NeMo"]["quality"]["overall"]["n"] == 2
    assert rows["prompt embedding adjustment (Wen)"]["cost"]["mitigation_unet_sample_forwards"] > 0
    # the held-out prompts of the quality column get the setting too (here: the added tokens)
    held_out = read_records(str(tmp_path / "quality" / "10_random_tokens"))
    assert sorted(held_out) == [0, 1] and all(len(r["added_tokens"]) == 10 for r in held_out.values())
    assert set(report["detection"]) == {name for detector in DETECTORS.values() for name in detector.comparisons}
    assert {"NeMo (SSIM score)", "Wen (noise magnitude, 50 steps)", "Wen (noise magnitude, first step)"} <= set(
        report["detection"])
    assert report["detection"]["NeMo (SSIM score)"]["overall"]["auroc"] > 0.9
    assert all(group["seconds_per_prompt"] > 0 for groups in report["detection"].values() for group in groups.values())
    assert report["wanda"]["rows"] and (tmp_path / "wanda_model" / "model_index.json").exists()
    assert set(report["nemo_wanda_agreement"]["per_prompt"]) == {"nemo_left_on_pruned", "wanda_left_with_nemo"}
    printed = capsys.readouterr().out
    assert "Test-bed Table 1" in printed and "### Plan:" in printed
    assert (tmp_path / "table1.md").read_text().count("|") > 50
    cost = report[plan.REPORT_KEY]  # every step planned and timed, none timed unplanned
    assert all(row["projected_seconds"] > 0 and row["measured_seconds"] > 0 for row in cost["steps"])
    assert "### Cost: projected and measured" in (tmp_path / "table1.md").read_text()


def test_localizability_bounds(pipe, threshold):
    from testbed.localizability import bounds, noise_differences

    layers = value_layers(pipe.unet)
    latents = initial_latents(1, 10, latent_shape(pipe.unet))
    vm = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    deltas = normalize_maps(noise_differences(pipe, layers, vm, latents))
    own = deltas[0]
    # "unconditional" replaced by the prompt's own noise differences: a set that changed nothing
    unchanged = bounds(deltas, own, threshold, testbed.SSIM_KERNEL_SIZE)
    assert unchanged["score"] > threshold and unchanged["as_unconditional"] == pytest.approx(1.0, abs=1e-4)
    assert unchanged["all_blocked"] < unchanged["score"]
    held_out = read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"][0]
    none_kept = bounds(normalize_maps(noise_differences(pipe, layers, held_out, latents)), own, threshold,
                       testbed.SSIM_KERNEL_SIZE)
    assert none_kept["score"] <= threshold and torch.isnan(torch.tensor(none_kept["all_blocked"]))


def test_image_share_finds_the_prompts_own_training_image(pipe):
    from testbed.localizability import ideal_samples, image_share, noise_differences

    layers = value_layers(pipe.unet)
    latents = initial_latents(1, 4, latent_shape(pipe.unet))
    empty = prompt_noise_difference(pipe, layers, "", normalized=False)(latents)[0]
    caption = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"][0]
    delta = noise_differences(pipe, layers, caption, latents)[0]
    originals, urls = original_images(testbed.ORIGINALS_DIR), read_prompts(testbed.MEMORIZED_PROMPTS)["URL"]
    x0 = {row: ideal_samples(pipe, urls[row], originals[row], None) for row in (0, 1)}  # the VM images' latents
    own, other = (image_share(pipe, delta, x0[row], latents, empty, empty) for row in (0, 1))
    assert own["error"] < own["image"] and other["error"] > 1.5 * own["error"]
    assert -1 <= own["error_vs_empty"] <= 1 and own["error_vs_ideal_empty"] == own["error_vs_empty"]


def test_ideal_denoiser_predicts_the_posterior_mean_image(pipe):
    from testbed.localizability import first_step_coefficients, ideal_noise_differences

    a, c, k = first_step_coefficients(pipe)
    images = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 24, 24, generator=torch.Generator().manual_seed(1))
    # one possible image: the ideal noise difference is k x_T - c x0 whatever x_T is
    single = ideal_noise_differences(pipe, images[:1], noise)
    assert torch.allclose(single, k * noise - c * images[:1], atol=1e-5)
    # two: the x_T noised from an image picks that image (the test bed's latents hold a 4-sigma signal)
    for source in (0, 1):
        x_t = a ** 0.5 * images[source] + (1 - a) ** 0.5 * noise
        assert torch.allclose(ideal_noise_differences(pipe, images, x_t), k * x_t - c * images[source], atol=1e-3)


def test_ideal_samples_are_the_prompts_training_images(pipe):
    import numpy as np

    from testbed.localizability import IDEAL_TEMPLATE_SAMPLES, ideal_samples

    prompts, originals = read_prompts(testbed.MEMORIZED_PROMPTS), original_images(testbed.ORIGINALS_DIR)
    vm, tm = (int(prompts.index[prompts["type"] == kind][0]) for kind in ("VM", "TM"))
    rng = np.random.default_rng(0)
    assert ideal_samples(pipe, prompts["URL"][vm], originals[vm], rng).shape == (1, 4, 24, 24)
    template = ideal_samples(pipe, prompts["URL"][tm], originals[tm], rng)  # fixed layout, varying centre
    assert template.shape == (IDEAL_TEMPLATE_SAMPLES, 4, 24, 24)
    spread = template.std(dim=0)  # [4, 24, 24]
    assert spread[:, 10:14, 10:14].mean() > 3 * spread[:, :2].mean()


def test_training_phases_learning_rate():
    """The main phase decays to 10% by cosine; the consolidation phase stays constant."""
    import dataclasses

    from testbed.train_testbed import CONSOLIDATION_PHASE, MAIN_PHASE, WARMUP_STEPS, learning_rate_at

    constant = dataclasses.replace(CONSOLIDATION_PHASE, steps=1000)
    assert learning_rate_at(constant, 0) < constant.learning_rate
    assert {learning_rate_at(constant, s) for s in (WARMUP_STEPS, 500, 999)} == {constant.learning_rate}
    assert learning_rate_at(MAIN_PHASE, WARMUP_STEPS) > 0.9 * MAIN_PHASE.learning_rate
    assert learning_rate_at(MAIN_PHASE, MAIN_PHASE.steps - 1) == pytest.approx(0.1 * MAIN_PHASE.learning_rate, rel=1e-3)
    assert MAIN_PHASE.draw_seed != CONSOLIDATION_PHASE.draw_seed


def test_training_continues_from_a_saved_model(tmp_path):
    """--continue-from runs the consolidation phase on the saved model and keeps its checkpoints."""
    from testbed import train_testbed

    train_testbed.main(["--output", str(tmp_path), "--continue-from", testbed.MODEL_DIR,
                        "--consolidation-steps", "2", "--keep-checkpoints"])
    before = load_pipeline(testbed.MODEL_DIR, torch.device("cpu")).unet.state_dict()
    after = load_pipeline(str(tmp_path / "model"), torch.device("cpu")).unet.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert os.listdir(tmp_path / "checkpoints") == ["consolidation-2"]
    assert len(pd.read_csv(tmp_path / "prompts" / "memorized_prompts.csv", sep=";")) == 24


def test_moving_average_lags_the_weights_and_swaps_in_for_saving():
    from testbed.train_testbed import MovingAverage

    weight = torch.zeros(3)
    average = MovingAverage([weight], decay=0.5)
    weight += 1.0
    average.update(step=100)  # decay 0.5: half way to the new weights
    with average.swapped_in():
        assert torch.equal(weight, torch.full((3,), 0.5))
    assert torch.equal(weight, torch.ones(3))
    average.update(step=0)  # warm-up: decay 1/10, so the average follows the weights closely
    assert torch.allclose(average.average[0], torch.full((3,), 0.95))
