"""Each long command killed with SIGKILL (a real process kill, ``NEMO_CRASH_AT``) at several
points on the test bed, then rerun: the outputs equal an uninterrupted run's.

Reduced: 2 prompts, 2 seeds or images, 2 steps. The uninterrupted runs are made once (in
this process) and shared; only the killed runs are subprocesses.
"""

import filecmp
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image

import testbed
from testbed.synthetic_data import write_ordinary_pairs
from testbed.train_testbed import SEED
from tests.conftest import SCRIPT_NAMES, script
from utils.crashpoints import CRASH_VARIABLE
from utils.files import read_threshold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["-v", testbed.MODEL_DIR]
DETECTION = ["--samples_per_prompt", "2", "--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE), "--limit", "2"]
GENERATION = ["-n", "2", "--steps", "2"]


def run(number: int, args: list[str]) -> None:
    script[number].main(args)


def killed(number: int, args: list[str], point: str) -> None:
    """Run script ``number`` in a process that SIGKILLs itself at ``point`` (POINT:N)."""
    env = dict(os.environ, PYTHONPATH=ROOT, **{CRASH_VARIABLE: point})
    process = subprocess.run([sys.executable, os.path.join(ROOT, f"{SCRIPT_NAMES[number]}.py"), *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == -signal.SIGKILL, f"not killed at {point}: {process.stderr[-800:]}"


# Script 3 reduced to a few cheap decisions: every seed kept, the first z-score cut only, no top k
CHEAP_LOCALIZATION = ["--pairwise_ssim_threshold", "0", "--ssim_threshold_initial_selection", "1",
                      "--initial_theta", "6", "--min_theta", "6", "--no_top_k"]


class Bed:
    """The test bed's inputs and the uninterrupted run of each command, made when first needed."""

    def __init__(self, clean):
        self.root = clean
        results = str(clean / "results.csv")
        self.args = dict(
            s1=["--prompts", testbed.ADDITIONAL_PROMPTS, "--limit", "8", *MODEL],
            s2=["--prompts", testbed.UNMEMORIZED_PROMPTS, *DETECTION, *MODEL],
            s3=["-d", testbed.MEMORIZED_PROMPTS, "--statistics", os.path.join(testbed.TESTBED_DIR, "statistics.pt"),
                *CHEAP_LOCALIZATION, *DETECTION, *MODEL],
            s4=["-f", results, "-d", testbed.MEMORIZED_PROMPTS, "--refined_neurons", "--limit", "2", *GENERATION,
                *MODEL],
            s7=["-d", testbed.MEMORIZED_PROMPTS, "--subset_size", "2", "--calls", "1", "--steps", "2",
                "--sparsity", "0.05", *MODEL],
            s8=["-d", testbed.MEMORIZED_PROMPTS, "--originals", testbed.ORIGINALS_DIR, "--neurons_from", results,
                "--similarity", "pixel_ssim", "--attack_steps", "2", "--limit", "2", *GENERATION, *MODEL],
            s9=["-d", testbed.MEMORIZED_PROMPTS, "--originals", testbed.ORIGINALS_DIR, "-f", results,
                "--utility_data", write_ordinary_pairs(str(clean / "utility"), 4, SEED, SEED + 3), "--epochs", "1",
                "--attack_steps", "1", "--attack_batch", "1", "--utility_batch", "1", "--limit", "2", *MODEL])
        self.outputs = {1: ("--output", "statistics.pt"), 2: ("--output", "scores.csv"), 3: ("-o", "results.csv"),
                        4: ("-o", "images"), 7: ("-o", "wanda"), 8: ("-o", "attack"), 9: ("-o", "finetuned")}
        self.made: set[int] = set()

    def clean(self, number: int) -> str:
        """The uninterrupted run's output of script ``number`` (and of script 3 it reads)."""
        if number in (4, 8, 9):
            self.clean(3)
        flag, name = self.outputs[number]
        if number not in self.made:
            run(number, [*self.args[f"s{number}"], flag, str(self.root / name)])
            self.made.add(number)
        return str(self.root / name)

    def command(self, number: int, output: str) -> list[str]:
        self.clean(number)
        return [*self.args[f"s{number}"], self.outputs[number][0], output]


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> Bed:
    return Bed(tmp_path_factory.mktemp("clean"))


def same_rows(a: str, b: str, ignore=("Seconds",)) -> None:
    left, right = pd.read_csv(a, sep=";"), pd.read_csv(b, sep=";")
    columns = [c for c in left.columns if c not in ignore]
    pd.testing.assert_frame_equal(left[columns], right[columns])


def same_images(a: str, b: str) -> None:
    names = sorted(n for n in os.listdir(a) if n.endswith(".jpg"))
    assert names == sorted(n for n in os.listdir(b) if n.endswith(".jpg")) and names
    for name in names:
        Image.open(os.path.join(b, name)).load()  # decodes whole
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name


def same_unet(a: str, b: str) -> None:
    from diffusers import UNet2DConditionModel

    left = UNet2DConditionModel.from_pretrained(a, subfolder="unet").state_dict()
    right = UNet2DConditionModel.from_pretrained(b, subfolder="unet").state_dict()
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("point", ["file_written:1", "file_written:2"])
def test_script1_killed_then_rerun(bed, tmp_path, point):
    out = str(tmp_path / "statistics.pt")
    args = bed.command(1, out)
    killed(1, args, point)
    assert not os.path.exists(out)  # never a half-written file under the final name
    run(1, args)
    expected, got = torch.load(bed.clean(1)), torch.load(out)
    assert all(torch.equal(x, y) for x, y in zip(expected["means"] + expected["stds"], got["means"] + got["stds"]))


@pytest.mark.parametrize("point", ["row_written:1", "file_written:2"])
def test_script2_killed_then_rerun(bed, tmp_path, point):
    out = str(tmp_path / "scores.csv")
    args = bed.command(2, out)
    killed(2, args, point)
    run(2, args)
    same_rows(bed.clean(2), out)
    assert read_threshold(out + ".threshold.json") == read_threshold(bed.clean(2) + ".threshold.json")


@pytest.mark.parametrize("point", ["row_written:1"])
def test_script3_killed_then_rerun(bed, tmp_path, point):
    out = str(tmp_path / "results.csv")
    args = bed.command(3, out)
    killed(3, args, point)
    assert os.path.exists(out + ".partial") and not os.path.exists(out)
    run(3, args)
    same_rows(bed.clean(3), out, ignore=("Seconds",))


@pytest.mark.parametrize("point", ["unet_step:3", "file_written:4", "prompt_done:1"])
def test_script4_killed_then_rerun(bed, tmp_path, point):
    out = str(tmp_path / "images")
    args = bed.command(4, out)
    killed(4, args, point)
    for name in os.listdir(out):  # whatever is there under a final name is whole
        if name.endswith(".jpg"):
            Image.open(os.path.join(out, name)).load()
    run(4, args)
    same_images(bed.clean(4), out)


def test_script7_killed_then_rerun(bed, tmp_path):
    out = str(tmp_path / "wanda")
    args = bed.command(7, out)
    killed(7, args, "file_written:1")
    assert not os.path.exists(out)  # a model folder appears only once complete
    run(7, args)
    same_unet(bed.clean(7), out)


@pytest.mark.parametrize("point", ["row_written:1", "unet_step:5"])
def test_script8_killed_then_rerun(bed, tmp_path, point):
    out = str(tmp_path / "attack")
    args = bed.command(8, out)
    killed(8, args, point)
    run(8, args)
    same_rows(os.path.join(bed.clean(8), "attack.csv"), os.path.join(out, "attack.csv"))
    same_images(os.path.join(bed.clean(8), "images"), os.path.join(out, "images"))


def test_script9_killed_then_rerun(bed, tmp_path):
    out = str(tmp_path / "finetuned")
    args = bed.command(9, out)
    killed(9, args, "update_done:1")
    assert not os.path.exists(out)
    run(9, args)
    same_unet(bed.clean(9), out)


def test_script9_resumes_from_its_checkpoint_with_the_uninterrupted_weights(bed, tmp_path, caplog):
    out = str(tmp_path / "finetuned")
    args = [*bed.command(9, out), "--checkpoint_every", "1"]  # 2 updates: one checkpoint before the kill
    killed(9, args, "update_done:1")
    assert not os.path.exists(out) and os.path.exists(out + ".checkpoint.pt")
    with caplog.at_level("WARNING"):
        run(9, args)
    assert "continuing after update 1" in caplog.text
    same_unet(bed.clean(9), out)  # bit for bit: weights, optimizer, scaler and generators were restored
    assert not os.path.exists(out + ".checkpoint.pt") and not os.path.exists(out + ".checkpoint.pt.settings.json")
