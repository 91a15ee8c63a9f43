"""The cost before the work (experiments/plan.py): script 6's --plan lists every step with its
units and a total and writes nothing; a generation's planned U-Net passes are those its
records count; a real run reports the projection beside what each step took."""

import json
import os

import pytest
from PIL import Image

from experiments import generate, plan
from experiments.rows import chosen_rows
from tests.conftest import TINY_KERNEL, script
from utils import cli
from utils.generation import read_records

PIXEL = ["--embedder", "pixel", "--clip-model", "none", "--ssim_kernel_size", str(TINY_KERNEL)]
SMALL = ["--steps", "2", "-n", "2"]


@pytest.fixture(scope="module")
def dori_inputs(tmp_path_factory):
    """A training image of the first memorized prompt and two utility pairs."""
    from testbed.synthetic_data import write_ordinary_pairs

    root = tmp_path_factory.mktemp("dori")
    (root / "originals").mkdir()
    Image.new("RGB", (24, 24), (200, 40, 40)).save(root / "originals" / "0000.png")
    return dict(originals=str(root / "originals"), pairs=write_ordinary_pairs(str(root / "pairs"), 2, 0, 0))


def test_plan_lists_every_step_with_its_units_and_a_total_and_writes_nothing(
        tiny_model_dir, prompt_files, dori_inputs, tmp_path, capsys):
    output = tmp_path / "table"
    report = script[6].main(["--plan", "-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", str(output),
                             "--quality_prompts", prompt_files["unmemorized"], "--unmemorized_prompts",
                             prompt_files["unmemorized"], "--dori", "--originals", dori_inputs["originals"],
                             "--utility_data", dori_inputs["pairs"], "--attack_steps", "2", *SMALL, *PIXEL])
    assert not output.exists()
    printed = capsys.readouterr().out
    steps = {row["step"]: row for row in report["plan"]["steps"]}
    rows = chosen_rows(None, True)
    expected = [plan.LOCALIZATION, plan.PRUNING, plan.FINETUNING, plan.METRICS, plan.attack_step("NeMo"),
                plan.detection_step("NeMo (SSIM score)")] + [plan.generation_step(row.name) for row in rows]
    for name in expected:
        assert name in steps and f"| {name} |" in printed, name
        assert steps[name]["projected_seconds"] > 0 and steps[name]["measured_seconds"] is None, name
    assert steps[plan.generation_step(rows[0].name)]["images"] == 3 * 2  # 3 prompts, 2 images each
    assert steps[plan.generation_step(rows[0].name)]["forwards"] == 3 * 2 * 2 * 2  # both halves, 2 steps
    assert steps[plan.FINETUNING]["attack_steps"] == 5 * 2  # 5 epochs over the one image, 2 steps each
    assert steps[plan.METRICS]["measured_images"] == sum(
        row["images"] for name, row in steps.items() if name.startswith("generation"))
    assert "localization: a prior" in printed and "**total**" in printed
    assert report["plan"]["total"]["projected_seconds"] == pytest.approx(
        sum(row["projected_seconds"] for row in steps.values()))


@pytest.mark.parametrize("mitigation", [
    {},  # plain
    {"han_batch_wise": True},  # a fixed number of passes
    {"wen": True, "wen_target_loss": 0.0, "wen_max_iterations": 2},  # a target never met: the upper bound
    {"han_per_sample": True, "han_target_loss": 0.0, "han_max_iterations": 2},
], ids=["plain", "han_batch_wise", "wen", "han_per_sample"])
def test_planned_passes_are_those_the_generation_records(tiny_model_dir, prompt_files, tmp_path, mitigation):
    values = dict(dataset=prompt_files["memorized"], output=str(tmp_path / "images"), version=tiny_model_dir,
                  steps=3, num_samples=2, **mitigation)
    work = generate.cost(cli.step_args(generate.add_args, **values))
    cli.run_step(generate, **values)
    records = read_records(values["output"]).values()
    assert work.prompts == len(records) == 3 and work.images == 3 * 2
    assert work.forwards == sum(record["unet_sample_forwards"] for record in records)
    assert work.backwards == sum(record["unet_sample_backwards"] for record in records)
    assert generate.cost(cli.step_args(generate.add_args, **values)).prompts == 0  # a rerun has nothing left to do


def test_a_real_run_puts_the_projection_beside_what_each_step_took(tiny_model_dir, prompt_files, tmp_path):
    statistics = str(tmp_path / "statistics.pt")
    script[1].main(["--prompts", prompt_files["unmemorized"], "--output", statistics, "-v", tiny_model_dir])
    output = tmp_path / "table"
    script[6].main(["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", str(output), "--statistics",
                    statistics, "--limit", "1", "--rows", "attention scaling (Ren)", *SMALL, *PIXEL])
    cost = json.loads((output / "table1.json").read_text())[plan.REPORT_KEY]
    names = [row["step"] for row in cost["steps"]]
    assert names == [plan.LOCALIZATION, plan.generation_step("all neurons active"),
                     plan.generation_step("attention scaling (Ren)"), plan.METRICS]
    for row in cost["steps"]:
        assert row["projected_seconds"] > 0 and row["measured_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["measured_seconds"] / row["projected_seconds"])
    assert "### Cost: projected and measured" in (output / "table1.md").read_text()
    assert os.path.exists(output / "images" / "attention_scaling__ren" / "img_0000_01.jpg")
