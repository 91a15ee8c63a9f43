"""Reruns of every writing command: the same settings continue (or find the work done), other
settings are a one-line error naming them that leaves the output untouched, --overwrite redoes
it; counts out of range are an error naming the flag before any work."""

import importlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import TINY_KERNEL, script
from utils.files import RESULT_COLUMNS, RowWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--samples_per_prompt", "2", "--ssim_kernel_size", str(TINY_KERNEL)]
GEN = ["--steps", "2", "-n", "2"]
TINY_WIDTHS = [8, 8, 16, 16, 16, 16, 16]

# (command, flag, value): every count, step and size flag refuses what it cannot mean
OUT_OF_RANGE = [
    ("1", "--batch_size", "0"), ("1", "--limit", "-1"),
    ("2", "--samples_per_prompt", "0"), ("2", "--limit", "0"), ("2", "--wen_samples", "0"),
    ("2", "--num_inference_steps", "0"), ("3", "--initial_k", "-1"), ("3", "--timestep_index", "-2"),
    ("3", "--batch_candidates", "-1"), ("4", "-n", "0"), ("4", "--steps", "0"), ("4", "-b", "0"),
    ("4", "--limit", "-1"), ("4", "--block_top_k_neurons", "0"), ("4", "--block_top_k_neurons_per_layer", "-3"),
    ("4", "--block_top_k_neuron_subgroups", "0"), ("4", "--random_tokens", "0"), ("4", "--wen_max_iterations", "0"),
    ("5", "--top_k", "0"), ("6", "--steps", "0"), ("6", "-n", "0"), ("6", "-b", "0"), ("6", "--limit", "-1"),
    ("6", "--wanda_subset_size", "0"), ("6", "--attack_steps", "0"), ("6", "--finetune_epochs", "0"),
    ("6", "--ssim_kernel_size", "0"), ("7", "--subset_size", "0"), ("7", "--calls", "0"), ("7", "--steps", "0"),
    ("7", "--sparsity", "0"), ("8", "--attack_steps", "0"), ("8", "--attack_batch", "0"), ("8", "-n", "0"),
    ("8", "--limit", "-1"), ("9", "--epochs", "0"), ("9", "--limit", "0"), ("9", "--utility_batch", "0"),
    ("testbed.table1", "--vm", "-1"), ("testbed.table1", "--steps", "0"), ("testbed.table1", "--quality", "0"),
    ("metrics.quality", "--batch-size", "0"), ("metrics.quality", "--num-workers", "-1"),
]


@pytest.mark.parametrize("command,flag,value", OUT_OF_RANGE)
def test_counts_out_of_range_name_the_flag(command, flag, value, capsys):
    main = script[int(command)].main if command.isdigit() else importlib.import_module(command).main
    with pytest.raises(SystemExit) as exit_:
        main([flag, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument" in error and flag in error and value in error, error


def one_line_error(call, *names):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in names), message
    return message


def snapshot(path) -> dict:
    """Every file under ``path`` with its bytes (a refused rerun must leave them as they were)."""
    if os.path.isfile(path):
        return {path: open(path, "rb").read()}
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(path) for f in files}


def test_script1_rerun_continue_refuse_overwrite(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "new" / "folder" / "stats.pt")  # a folder that does not exist yet is made
    args = ["--prompts", prompt_files["unmemorized"], "--output", out, "-v", tiny_model_dir]
    script[1].main(args)
    before = snapshot(out)
    os.utime(out, (0, 0))
    script[1].main(args)  # same settings: nothing to do
    assert os.stat(out).st_mtime == 0
    one_line_error(lambda: script[1].main([*args, "--limit", "2"]), "limit", "--overwrite")
    assert snapshot(out) == before
    script[1].main([*args, "--limit", "2", "--overwrite"])
    import torch
    assert torch.load(out)["num_prompts"] == 2


def test_script2_a_failing_rerun_keeps_the_rows_and_the_threshold(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "scores.csv")
    args = ["--prompts", prompt_files["unmemorized"], "--output", out, "-v", tiny_model_dir, "--limit", "2", *FAST]
    script[2].main(args)
    before = snapshot(str(tmp_path))
    one_line_error(lambda: script[2].main([*args, "--samples_per_prompt", "1", "--overwrite"]),
                   "--samples_per_prompt")
    one_line_error(lambda: script[2].main([*args, "--seed", "5"]), "seed", "--overwrite")
    assert snapshot(str(tmp_path)) == before
    script[2].main([*args, "--limit", "3"])  # a larger --limit continues: one more row
    assert len(pd.read_csv(out, sep=";")) == 3
    script[2].main([*args, "--seed", "5", "--overwrite"])
    assert len(pd.read_csv(out, sep=";")) == 2
    assert json.load(open(out + ".settings.json"))["seed"] == 5


def test_script4_refuses_another_mode_in_the_same_folder(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "images")
    # modes without neurons need no results file
    args = ["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-f", str(tmp_path / "absent.csv"), "-o", out,
            "--limit", "1", *GEN]
    script[4].main(args)
    before = snapshot(out)
    script[4].main(args)  # same settings: nothing generated again
    assert snapshot(out) == before
    one_line_error(lambda: script[4].main([*args, "--random_tokens", "4"]), "random_tokens", "--overwrite")
    assert snapshot(out) == before
    script[4].main([*args, "--random_tokens", "4", "--overwrite"])
    after = snapshot(out)
    image = os.path.join(out, "img_0000_00.jpg")
    assert after[image] != before[image]
    with pytest.raises(ValueError, match="absent.csv not found"):
        script[4].main([*args, "--refined_neurons", "-o", str(tmp_path / "refined")])
    assert not os.path.exists(tmp_path / "refined")  # refused before the folder is made


def test_script4_batches_prompts_with_all_their_images_in_one_call(tiny_model_dir, prompt_files, tmp_path):
    one, three = str(tmp_path / "b1"), str(tmp_path / "b3")
    args = ["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], *GEN, "--limit", "3"]
    script[4].main([*args, "-o", one])
    script[4].main([*args, "-o", three, "-b", "3"])
    import numpy as np
    from PIL import Image
    for name in sorted(f for f in os.listdir(one) if f.endswith(".jpg")):
        a, b = (np.asarray(Image.open(os.path.join(d, name)), dtype=float) for d in (one, three))
        assert np.abs(a - b).max() <= 2, name  # the same images; a batch sums in another order


def write_results(path, rows: int) -> str:
    with RowWriter(str(path), RESULT_COLUMNS, {}) as writer:
        for i in range(rows):
            writer.write(i, {"Caption": f"p{i}", "URL": "", "Initial Neurons": [[1]] + [[]] * 6, "Initial SSIM": 0.3,
                             "Refined Neurons": [[1]] + [[]] * 6, "Refined SSIM": 0.2})
    return str(path)


@pytest.fixture()
def attack_inputs(tmp_path):
    from PIL import Image

    prompts = tmp_path / "memorized.csv"
    prompts.write_text(";Caption;type\n0;a red cat;VM\n1;the blue dog;VM\n")
    originals = tmp_path / "originals"
    originals.mkdir()
    for row in range(2):
        Image.new("RGB", (48, 48), (200, 30 * row, 30)).save(originals / f"{row:04d}.png")
    return str(prompts), str(originals), write_results(tmp_path / "results.csv", 1)


def test_scripts8_and_9_refuse_prompts_missing_from_the_results(tiny_model_dir, attack_inputs, tmp_path):
    prompts, originals, results = attack_inputs
    out = str(tmp_path / "attack")
    one_line_error(lambda: script[8].main(["-v", tiny_model_dir, "-d", prompts, "--originals", originals,
                                           "--neurons_from", results, "-o", out, "--similarity", "pixel_ssim"]),
                   results, "[1]")
    assert not os.path.exists(out)
    one_line_error(lambda: script[9].main(["-v", tiny_model_dir, "-d", prompts, "--originals", originals,
                                           "-f", results, "--utility_data", prompts, "-o", str(tmp_path / "ft")]),
                   results, "[1]")


@pytest.mark.parametrize("number,args", [
    (5, ["--neurons", "[[1], [], [], [], [], [], []]"]),
    (7, ["--sparsity", "0.05"]),
])
def test_model_folders_finish_once_and_refuse_other_settings(tiny_model_dir, prompt_files, tmp_path, number, args):
    out = str(tmp_path / "model")
    flags = ["-v", tiny_model_dir, "-o", out, *args] + (
        ["-d", prompt_files["memorized"], "--subset_size", "1", "--calls", "1", "--steps", "2"] if number == 7 else [])
    script[number].main(flags)
    before = snapshot(out)
    script[number].main(flags)  # complete with the same settings: nothing to do
    assert snapshot(out) == before
    other = ["--neurons", "[[2], [], [], [], [], [], []]"] if number == 5 else ["--sparsity", "0.1"]
    name = "neurons" if number == 5 else "sparsity"
    one_line_error(lambda: script[number].main([*flags, *other]), name, "--overwrite")
    assert snapshot(out) == before
    script[number].main([*flags, *other, "--overwrite"])
    assert json.load(open(os.path.join(out, "settings.json")))[name] == (other[1] if number == 5 else 0.1)


def test_a_metric_json_refuses_other_settings(tmp_path, prompt_files):
    from PIL import Image

    from metrics import diversity

    images = tmp_path / "images"
    images.mkdir()
    for p in range(2):
        for j in range(2):
            Image.new("RGB", (24, 24), (40 * j + p, 90, 200)).save(images / f"img_{p:04d}_{j:02d}.jpg")
    args = ["-i", str(images), "--embedder", "pixel"]
    diversity.main(args)
    diversity.main(args)  # same settings: figures made again
    one_line_error(lambda: diversity.main([*args, "-p", prompt_files["memorized"]]), "prompts", "--overwrite")
    diversity.main([*args, "-p", prompt_files["memorized"], "--overwrite"])


def test_help_of_each_numbered_script_names_sources():
    for number in (1, 4):
        text = subprocess.run([sys.executable, os.path.join(ROOT, f"{script[number].__name__}.py"), "--help"],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
        assert "authors'" in text and "ours" in text and "--overwrite" in text
