"""Script 9 under a launcher: two processes (gloo, CPU) fine-tune data-parallel on the tiny model.

Reduced: 3 memorized images, 1-2 epochs, 2 attack steps; 3 noise samples and 3 utility pairs
an update, so that two processes split them unevenly (2 and 1).
"""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from experiments import finetune
from testbed.synthetic_data import write_ordinary_pairs
from tests.conftest import script
from tests.launcher import launch
from utils.crashpoints import CRASH_VARIABLE
from utils.distributed import weights_checksum

LEARNING_RATE = 1e-4
ONE_NEURON = "[[0], [], [], [], [], [], []]"  # one neuron of the tiny model's first value layer


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> list[str]:
    """Script 9's flags on the tiny model, all but -o."""
    folder = tmp_path_factory.mktemp("inputs")
    captions = ["a red cat", "the blue dog", "a green tree"]
    (folder / "memorized.csv").write_text(";Caption;type\n" + "".join(f"{i};{c};VM\n" for i, c in enumerate(captions)))
    (folder / "originals").mkdir()
    for row, colour in enumerate(((200, 30, 30), (30, 30, 200), (30, 200, 30))):
        Image.new("RGB", (48, 48), colour).save(folder / "originals" / f"{row:04d}.png")
    header = ";Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM\n"
    (folder / "results.csv").write_text(header + "".join(f"{i};{c};u;{ONE_NEURON};0.3;{ONE_NEURON};0.3\n"
                                                         for i, c in enumerate(captions)))
    return ["9_adversarial_finetuning.py", "-v", tiny_model_dir, "-d", str(folder / "memorized.csv"),
            "--originals", str(folder / "originals"), "-f", str(folder / "results.csv"),
            "--utility_data", write_ordinary_pairs(str(folder / "pairs"), 4, 0, 0), "--epochs", "1",
            "--attack_steps", "2", "--attack_batch", "3", "--utility_batch", "3", "--distillation_weight", "10",
            "--learning_rate", str(LEARNING_RATE), "--surrogate_steps", "2"]


def launched(world_size: int, command: list[str], logs) -> None:
    logs.mkdir(exist_ok=True)
    launch(world_size, command, logs)


def unet(folder) -> dict:
    return UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet").state_dict()


def summary(folder) -> dict:
    return json.load(open(folder / finetune.SUMMARY_NAME))


def test_two_processes_of_the_single_schedule_end_with_the_weights_of_one(inputs, tmp_path):
    outputs = {n: tmp_path / f"tuned{n}" for n in (1, 2)}
    for n, out in outputs.items():
        launched(n, [*inputs, "--schedule", "single", "-o", str(out)], tmp_path / f"logs{n}")
    one, two = summary(outputs[1]), summary(outputs[2])
    assert (one["processes"], two["processes"]) == (1, 2) and one["schedule"] == two["schedule"] == "single"
    assert [h["images"] for h in one["history"]] == [h["images"] for h in two["history"]] == [[0], [1], [2]]
    for a, b in zip(one["history"], two["history"]):  # the whole batch's losses, added up from two parts
        for key in ("attack_loss", "adversarial_loss", "utility_loss", "distillation_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), key
    # Not bit for bit: each process runs the U-Net on its part of a batch and the parts' gradients
    # are added in another order, so the gradients agree up to float rounding. AdamW divides each
    # gradient by its running magnitude: most weights move alike to far below the learning rate,
    # but where a gradient is near zero (cancelling terms) rounding can turn that weight's step
    # around, up to 2 learning rates an update (on the test bed after 2 updates 5 of 862,804 weights
    # differed by more than half the learning rate).
    one_unet, two_unet = unet(outputs[1]), unet(outputs[2])
    difference = torch.cat([(one_unet[k] - two_unet[k]).abs().flatten() for k in one_unet])
    assert (difference > LEARNING_RATE / 100).float().mean() < 1e-3, "more than rare weights differ"
    assert difference.max() <= 2 * LEARNING_RATE * len(one["history"])


@pytest.fixture(scope="module")
def images_run(inputs, tmp_path_factory):
    """The uninterrupted two-process run of the default schedule, 2 epochs: (its command, its folder)."""
    folder = tmp_path_factory.mktemp("images")
    command = [*inputs, "--epochs", "2", "-o", str(folder / "tuned")]
    launched(2, command, folder / "logs")
    return command, folder / "tuned"


def test_two_processes_of_the_images_schedule_take_two_images_an_update_with_the_same_weights(images_run, tmp_path):
    command, out = images_run
    record = summary(out)
    assert record["processes"] == 2 and record["schedule"] == "images"
    # ceil(3 / 2) = 2 updates an epoch; the second has one image: rank 1 adds zero gradients
    assert record["updates"] == 4 and [h["images"] for h in record["history"]] == [[0, 1], [2], [0, 1], [2]]
    # every process held the weights of this checksum after each update (else the run raises); rank 0 saved them
    checksums = [h["weights_checksum"] for h in record["history"]]
    assert len(set(checksums)) == 4
    assert weights_checksum(UNet2DConditionModel.from_pretrained(str(out), subfolder="unet")) == checksums[-1]
    with pytest.raises(ValueError, match="processes 2 -> null, schedule"):  # the schedule and the number are recorded
        script[9].main([*command[1:], "--schedule", "single"])


def test_a_killed_two_process_run_continues_from_its_checkpoint(images_run, tmp_path, monkeypatch):
    command, uninterrupted = images_run
    out = tmp_path / "tuned"
    rerun = [*command[:-1], str(out), "--checkpoint_every", "1"]
    monkeypatch.setenv(CRASH_VARIABLE, "update_done:2")  # both processes, after the checkpoint of update 2
    with pytest.raises(AssertionError, match="rc -9"):
        launched(2, rerun, tmp_path / "killed")
    assert not out.exists() and (tmp_path / f"tuned{finetune.CHECKPOINT_SUFFIX}").exists()
    monkeypatch.delenv(CRASH_VARIABLE)
    launched(2, rerun, tmp_path / "rerun")
    for rank in (0, 1):  # every process read the checkpoint
        assert "continuing after update 2" in (tmp_path / "rerun" / f"world2_rank{rank}.log").read_text()
    expected, got = unet(uninterrupted), unet(out)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not (tmp_path / f"tuned{finetune.CHECKPOINT_SUFFIX}").exists()


CHECKS = """
import torch
from utils import distributed
with distributed.process_group(torch.device("cpu")) as shard:
    r = shard.rank
    assert [shard.batch_slice(3), shard.batch_slice(1)] == [[slice(0, 1), slice(0, 0)], [slice(1, 3), slice(0, 1)]][r]
    used, unused, alone = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    used.grad = torch.tensor([1.0, 2.0]) * (r + 1)
    if r == 1:
        alone.grad = torch.tensor([5.0, 5.0])
    distributed.sum_gradients(shard, [used, unused, alone])
    assert used.grad.tolist() == [3.0, 6.0] and unused.grad is None and alone.grad.tolist() == [5.0, 5.0]
    torch.manual_seed(0)
    distributed.require_same(shard, distributed.weights_checksum(torch.nn.Linear(2, 2)), "weights")
    distributed.require_same(shard, r, "ranks")
"""


def test_gradients_are_summed_over_two_processes_and_different_weights_are_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"the processes hold different ranks: rank 0: 0, rank 1: 1"):
        launched(2, ["-c", CHECKS], tmp_path)
