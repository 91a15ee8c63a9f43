"""Script 7 under a launcher: two processes (gloo, CPU) prune the weights one process prunes."""

import json
import os

import torch
from diffusers import UNet2DConditionModel

from experiments import prune
from tests.launcher import launch
from utils.methods.wanda import pruning as wanda


def test_two_processes_prune_the_weights_one_process_prunes(tiny_model_dir, prompt_files, tmp_path):
    outputs = {n: tmp_path / "models" / f"pruned{n}" for n in (1, 2)}
    for n, out in outputs.items():
        # |P| = 3 and the empty prompt: rank 0 runs prompts 0 and 2, rank 1 prompt 1 and the empty prompt
        launch(n, ["7_prune_memorized_weights.py", "-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", str(out),
                   "--subset_size", "3", "--sparsity", "0.1", "--calls", "2", "--steps", "5"], tmp_path)
    assert sorted(os.listdir(tmp_path / "models")) == ["pruned1", "pruned2"]  # rank 1 wrote nothing beside
    one, two = (wanda.load_masks(str(outputs[n] / prune.MASKS_NAME)) for n in (1, 2))
    assert one.layers == two.layers
    assert all(torch.equal(a, b) for a, b in zip(one.union, two.union))
    assert all(torch.equal(a, b) for x, y in zip(one.per_call, two.per_call) for a, b in zip(x, y))
    summaries = [json.load(open(outputs[n] / prune.SUMMARY_NAME)) for n in (1, 2)]
    assert summaries[0]["pruned_weights"] == summaries[1]["pruned_weights"] > 0
    assert summaries[0]["unet_sample_forwards"] == summaries[1]["unet_sample_forwards"]
    assert [s["processes"] for s in summaries] == [1, 2]
    weights = [UNet2DConditionModel.from_pretrained(str(outputs[n]), subfolder="unet").state_dict() for n in (1, 2)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_norms_of_prompts_collected_apart_add_up_to_the_same_bits(tiny_pipe):
    captions = ["a red cat", "the blue dog", "a photo of a house"]
    settings = dict(calls=2, steps=5)
    together = wanda.input_norms(tiny_pipe, captions, **settings)
    # as two processes collect them: prompts 0 and 2, then prompt 1, added in prompt order
    even, odd = wanda.prompt_input_norms(tiny_pipe, captions[::2], **settings), \
        wanda.prompt_input_norms(tiny_pipe, captions[1::2], **settings)
    apart = wanda.total([even[0], odd[0], even[1]])
    assert apart.unet_sample_forwards == together.unet_sample_forwards
    for a, b in zip(apart.squares, together.squares):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert wanda.prompt_input_norms(tiny_pipe, [], **settings) == []  # a process with no share runs nothing


def test_one_process_gathers_its_own_items_without_a_group():
    from utils import distributed

    with distributed.process_group(torch.device("cpu")) as shard:
        assert (shard.rank, shard.world_size) == (0, 1)
        assert list(distributed.gather_by_index(shard, {2: "b", 0: "a"}).items()) == [(0, "a"), (2, "b")]
        with distributed.main_process_first(shard):
            distributed.barrier(shard)
