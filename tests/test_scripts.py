"""Each numbered script end to end on the tiny pipeline (CPU, no downloads)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline

from tests.conftest import TINY_KERNEL, script, upstream_file
from utils.files import read_results
from utils.generation import RECORDS_NAME, read_records
from utils.layers import value_layers
from utils.methods.nemo import localization
from utils.methods.nemo.deactivation import deactivate_neurons

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--samples_per_prompt", "4", "--ssim_kernel_size", str(TINY_KERNEL)]


@pytest.fixture(scope="module")
def statistics(tiny_model_dir, prompt_files, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stats") / "stats.pt")
    script[1].main(["--prompts", prompt_files["unmemorized"], "--output", path, "-v", tiny_model_dir])
    return path


def localize(model, prompts, statistics, output, *extra):
    # pairwise threshold 0 keeps every seed: the random tiny model's scores sit far below 0.428
    script[3].main(["-v", model, "-d", prompts, "-o", output, "--statistics", statistics, "--limit", "2",
                    "--pairwise_ssim_threshold", "0.0", *FAST, *extra])
    return pd.read_csv(output, sep=";")


def test_script1_writes_statistics_with_layer_names(statistics, tiny_model_dir):
    data = torch.load(statistics)
    assert data["num_prompts"] == 4 and data["model"] == tiny_model_dir
    assert len(data["layer_names"]) == 7 and [len(m) for m in data["means"]] == [8, 8, 16, 16, 16, 16, 16]


def test_script2_scores_each_prompt_and_prints_the_threshold(tiny_model_dir, prompt_files, tmp_path, capsys):
    out = str(tmp_path / "scores.csv")
    threshold = script[2].main(["--prompts", prompt_files["unmemorized"], "--output", out, "-v", tiny_model_dir, *FAST])
    frame = pd.read_csv(out, sep=";")
    assert len(frame) == 4 and frame["Memorization Score"].between(0, 1).all()
    assert threshold == pytest.approx(frame["Memorization Score"].mean() + frame["Memorization Score"].std())
    assert f"{threshold:.4f}" in capsys.readouterr().out
    assert json.load(open(out + ".threshold.json"))["num_prompts"] == 4


def test_script3_localizes_and_batching_changes_nothing(tiny_model_dir, prompt_files, statistics, tmp_path):
    sequential = localize(tiny_model_dir, prompt_files["memorized"], statistics, str(tmp_path / "a.csv"),
                          "--batch_candidates", "0")
    batched = localize(tiny_model_dir, prompt_files["memorized"], statistics, str(tmp_path / "b.csv"),
                       "--batch_candidates", "8")
    assert list(sequential.columns[1:7]) == ["Caption", "URL", "Initial Neurons", "Initial SSIM",
                                             "Refined Neurons", "Refined SSIM"]
    # same decisions; scores agree to float precision (a U-Net batch of 8 sets sums in another order)
    same = ["Caption", "Initial Neurons", "Refined Neurons"]
    pd.testing.assert_frame_equal(sequential[same], batched[same])
    for column in ("Initial SSIM", "Refined SSIM"):
        assert (sequential[column] - batched[column]).abs().max() < 1e-5
    assert (batched["UNet Sample Forwards"] > 0).all()
    refined = read_results(str(tmp_path / "a.csv"), [8, 8, 16, 16, 16, 16, 16])["Refined Neurons"]
    assert any(any(layer) for layer in refined)


def test_script3_smoke_runs_each_step_of_the_walk_once(tiny_model_dir, prompt_files, statistics, tmp_path):
    output = str(tmp_path / "smoke.csv")
    script[3].main(["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", output, "--statistics", statistics,
                    "--limit", "1", "--ssim_kernel_size", str(TINY_KERNEL), "--smoke"])
    row = read_results(output, [8, 8, 16, 16, 16, 16, 16]).iloc[0]
    assert [len(layer) for layer in row["Initial Neurons"]] == [1] * 7  # the first step: top-1 per layer
    assert row["Refined Neurons"] == row["Initial Neurons"]  # every refinement test rejected
    # 7 layer and 7 neuron tests, each rejected by its one-seed probe, besides the first step
    assert row["Sets Scored"] == 1 + 7 + 7 and row["Seeds Skipped"] == 14
    # the unblocked call and the first step's probe and call (2 seeds each), one forward per test
    assert row["UNet Sample Forwards"] == 2 + 1 + 2 + 14


def test_script3_resume_after_a_crash_gives_the_same_file(tiny_model_dir, prompt_files, statistics, tmp_path,
                                                          monkeypatch):
    full = localize(tiny_model_dir, prompt_files["memorized"], statistics, str(tmp_path / "full.csv"))
    crashed = str(tmp_path / "crashed.csv")
    real, calls = localization.localize_prompt, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(localization, "localize_prompt", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        localize(tiny_model_dir, prompt_files["memorized"], statistics, crashed)
    assert len(pd.read_csv(crashed + ".partial", sep=";")) == 1 and not os.path.exists(crashed)
    monkeypatch.setattr(localization, "localize_prompt", real)
    resumed = localize(tiny_model_dir, prompt_files["memorized"], statistics, crashed, "--resume")
    columns = [c for c in full.columns if c != "Seconds"]
    pd.testing.assert_frame_equal(full[columns], resumed[columns])
    with pytest.raises(ValueError, match="other settings"):
        localize(tiny_model_dir, prompt_files["memorized"], statistics, crashed, "--resume", "--seed", "3")


@pytest.fixture(scope="module")
def results(tiny_model_dir, prompt_files, statistics, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("results") / "results.csv")
    localize(tiny_model_dir, prompt_files["memorized"], statistics, path)
    return path


GEN = ["--steps", "2", "-n", "2"]


@pytest.mark.parametrize("mode", [[], ["--refined_neurons"], ["--initial_neurons"], ["--block_random_neurons"],
                                  ["--block_top_k_neurons_per_layer", "1"], ["--block_top_k_neurons", "2"],
                                  ["--block_top_k_neuron_subgroups", "1"], ["--wen", "--wen_max_iterations", "2"],
                                  ["--wen", "--wen_max_iterations", "2", "--wen_timestep_index", "1"],
                                  ["--ren"], ["--random_tokens", "4"]])
def test_script4_generates_named_images_config_and_records(tiny_model_dir, results, prompt_files, tmp_path, mode):
    out = str(tmp_path / "images")
    args = ["-v", tiny_model_dir, "-f", results, "-d", prompt_files["memorized"], "-o", out, "--limit", "2", *GEN,
            *mode]
    script[4].main(args)
    names = [f"img_{p:04d}_{s:02d}.jpg" for p in range(2) for s in range(2)]
    assert sorted(f for f in os.listdir(out) if f.endswith(".jpg")) == names
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["num_samples"] == 2 and len(config["neurons"]) == 2
    records = read_records(out)
    assert sorted(records) == [0, 1] and records[0]["caption"] == config["prompts"]["0"]
    if "--random_tokens" in mode:
        assert len(records[1]["added_tokens"]) == 4 and records[1]["caption_used"] != records[1]["caption"]
    if "--wen" in mode:
        assert 1 <= len(records[0]["wen_losses"]) <= 2 and records[0]["mitigation_unet_sample_forwards"] > 0
    os.remove(os.path.join(out, names[-1]))  # a killed run: only the unfinished prompt is generated again
    script[4].main(args)
    assert sorted(f for f in os.listdir(out) if f.endswith(".jpg")) == names
    assert [json.loads(line)["prompt"] for line in open(os.path.join(out, RECORDS_NAME))] == [0, 1, 1]


def test_script4_baselines_run_on_a_prompt_file_alone(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "ren")
    script[4].main(["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", out, "--ren", *GEN])
    assert len([f for f in os.listdir(out) if f.endswith(".jpg")]) == 2 * 4
    with pytest.raises(SystemExit):
        script[4].main(["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", out,
                        "--refined_neurons", *GEN])


def test_script4_type_filter_and_deactivation_change_images(tiny_model_dir, results, prompt_files, tmp_path):
    plain, blocked = str(tmp_path / "plain"), str(tmp_path / "blocked")
    args = ["-v", tiny_model_dir, "-f", results, "-d", prompt_files["memorized"], "--memorization_type", "VM", *GEN,
            "--limit", "1"]
    script[4].main([*args, "-o", plain])
    script[4].main([*args, "-o", blocked, "--block_top_k_neurons", "40"])
    assert sorted(os.listdir(plain)) == ["config.json"] + [f"img_{p:04d}_{s:02d}.jpg" for p in (0,) for s in range(2)] + [
        RECORDS_NAME, "settings.json"]
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(os.path.join(plain, "img_0000_00.jpg")), dtype=float)
    b = np.asarray(Image.open(os.path.join(blocked, "img_0000_00.jpg")), dtype=float)
    assert np.abs(a - b).mean() > 0.5


@torch.no_grad()
def test_script5_pruned_model_equals_the_hooked_model(tiny_model_dir, tiny_pipe, tmp_path):
    neurons = [[1], [], [0, 5], [], [], [], [3, 15]]
    out = str(tmp_path / "pruned")
    script[5].main(["-v", tiny_model_dir, "-o", out, "--neurons", str(neurons)])
    pruned = StableDiffusionPipeline.from_pretrained(out).unet
    x, text = torch.randn(2, 4, 24, 24), torch.randn(2, 77, 16)
    with deactivate_neurons(value_layers(tiny_pipe.unet), neurons):
        hooked = tiny_pipe.unet(x, 961, encoder_hidden_states=text).sample
    torch.testing.assert_close(pruned(x, 961, encoder_hidden_states=text).sample, hooked, rtol=0, atol=0)


def test_bad_inputs_are_one_line_errors(tiny_model_dir, prompt_files, statistics, tmp_path):
    with pytest.raises(ValueError, match="prompt file .*missing.csv not found"):
        script[3].main(["-v", tiny_model_dir, "-d", str(tmp_path / "missing.csv"), "--statistics", statistics])
    with pytest.raises(ValueError, match="do not match the model's 7 value layers"):
        script[3].main(["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", str(tmp_path / "r.csv"),
                        "--statistics", upstream_file("statistics_additional_laion_prompts_v1_4.pt"), *FAST])
    with pytest.raises(ValueError, match="latent of 24x24 is too small"):
        script[2].main(["--prompts", prompt_files["unmemorized"], "--output", str(tmp_path / "s.csv"),
                        "-v", tiny_model_dir])
    with pytest.raises(ValueError, match="--neurons: malformed neuron list"):
        script[5].main(["-v", tiny_model_dir, "-o", str(tmp_path / "p"), "--neurons", "[[1], []"])
    with pytest.raises(ValueError, match="could not load model .*pass a local diffusers folder"):
        script[1].main(["-v", str(tmp_path / "no_model"), "--prompts", prompt_files["unmemorized"],
                        "--output", str(tmp_path / "statistics.pt")])


def test_command_line_error_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "3_detect_memorized_neurons.py", "-d", str(tmp_path / "x.csv")],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"3_detect_memorized_neurons.py: error: prompt file {tmp_path / 'x.csv'} not found"]


@pytest.mark.parametrize("n", range(1, 7))
def test_help_shows_defaults(n):
    run = subprocess.run([sys.executable, f"{script[n].__name__}.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "(default:" in run.stdout


def launch(world_size: int, script_name: str, args: list[str]) -> None:
    """Run a script as ``world_size`` processes with a launcher's environment (RANK, WORLD_SIZE)."""
    runs = [subprocess.Popen([sys.executable, f"{script_name}.py", *args], cwd=ROOT, stderr=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=ROOT, RANK=str(r), LOCAL_RANK=str(r),
                                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1"))
            for r in range(world_size)]
    for run in runs:
        _, err = run.communicate()
        assert run.returncode == 0, err.decode()[-2000:]


def test_two_processes_write_what_one_writes(tiny_model_dir, prompt_files, statistics, tmp_path):
    stats = {n: str(tmp_path / f"stats{n}.pt") for n in (1, 2)}
    for n in (1, 2):
        launch(n, "1_compute_activations_statistics", ["--prompts", prompt_files["unmemorized"],
                                                       "--output", stats[n], "-v", tiny_model_dir])
    for a, b in zip(torch.load(stats[1])["stds"], torch.load(stats[2])["stds"]):
        torch.testing.assert_close(a, b)
    scores = {n: str(tmp_path / f"scores{n}.csv") for n in (1, 2)}
    results = {n: str(tmp_path / f"results{n}.csv") for n in (1, 2)}
    for n in (1, 2):
        launch(n, "2_compute_pairwise_ssim", ["--prompts", prompt_files["unmemorized"], "--output", scores[n],
                                              "-v", tiny_model_dir, *FAST])
        launch(n, "3_detect_memorized_neurons", ["-v", tiny_model_dir, "-d", prompt_files["memorized"],
                                                 "-o", results[n], "--statistics", statistics,
                                                 "--pairwise_ssim_threshold", "0.0", *FAST])
    for written in (scores, results):
        one, two = pd.read_csv(written[1], sep=";"), pd.read_csv(written[2], sep=";")
        columns = [c for c in one.columns if c != "Seconds"]
        pd.testing.assert_frame_equal(one[columns], two[columns])
    assert json.load(open(scores[2] + ".threshold.json")) == json.load(open(scores[1] + ".threshold.json"))
