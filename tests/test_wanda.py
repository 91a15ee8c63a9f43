"""Wanda pruning of memorized weights (Chavhan et al.) on constructed layers and the tiny pipeline."""

import importlib
import json
import os

import pytest
import torch
from diffusers import StableDiffusionPipeline

from experiments import prune
from utils.hooks import edit_calls
from utils.methods.wanda import pruning as wanda

prune_script = importlib.import_module("7_prune_memorized_weights")


def test_scores_pick_the_top_share_of_each_row_by_weight_times_input_norm():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, 1.0, -0.5, 2.0]])
    norm = torch.tensor([1.0, 1.0, 3.0, 10.0])  # scores: row 0 = 1, 4, 6, 5; row 1 = 3, 1, 1.5, 20
    null = torch.zeros(4)
    assert wanda.memorized_weights(weight, norm, null, 0.5).tolist() == [[False, False, True, True],
                                                                         [True, False, False, True]]
    assert wanda.memorized_weights(weight, norm, null, 0.25).tolist() == [[False, False, True, False],
                                                                          [False, False, False, True]]
    assert not wanda.memorized_weights(weight, norm, null, 0.2).any()  # int(0.2 * 4) = 0 per row


def test_weights_that_score_as_high_for_the_empty_prompt_are_not_memorized():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5]])
    norm = torch.tensor([1.0, 1.0, 3.0, 10.0])
    null = torch.tensor([0.0, 0.0, 3.0, 9.0])  # column 2 scores the same for the empty prompt
    assert wanda.memorized_weights(weight, norm, null, 0.5).tolist() == [[False, False, False, True]]


class TinyFFN(torch.nn.Module):
    """A module named like a U-Net with two ff.net.2 layers."""

    def __init__(self):
        super().__init__()
        self.down_blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.down_blocks[0].ff = torch.nn.Module()
        self.down_blocks[0].ff.net = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity(), torch.nn.Linear(4, 2)])
        self.mid_block = torch.nn.Module()
        self.mid_block.ff = torch.nn.Module()
        self.mid_block.ff.net = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity(), torch.nn.Linear(4, 2)])


def test_masks_are_united_over_calls():
    unet = TinyFFN()
    for layer in wanda.ffn_layers(unet).values():
        layer.weight.data = torch.ones(2, 4)
    one_hot = lambda j: [[torch.nn.functional.one_hot(torch.tensor(j), 4).double()] * 2]
    memorized = wanda.InputNorms([one_hot(0)[0], one_hot(3)[0]])  # call 0 favours input 0, call 1 input 3
    null = wanda.InputNorms([[torch.zeros(4, dtype=torch.float64)] * 2] * 2)
    masks = wanda.wanda_masks(unet, memorized, null, sparsity=0.25)
    assert [m[0].tolist() for m in masks.per_call[0]] == [[True, False, False, False]] * 2
    assert masks.union[0].tolist() == [[True, False, False, True]] * 2
    assert masks.pruned_fraction() == [0.5, 0.5]


def test_input_norms_sum_unit_rows_of_both_guidance_halves_for_the_first_calls(tiny_pipe):
    calls = []
    with edit_calls({"unet": tiny_pipe.unet}, lambda a, k, n: calls.append(1) or (a, k)):
        norms = wanda.input_norms(tiny_pipe, ["a red cat", "the blue dog"], calls=2, steps=5)
    assert len(calls) == 2 * 2  # only the first 2 U-Net calls of each prompt are run
    layers = wanda.ffn_layers(tiny_pipe.unet)
    assert len(layers) == 16 and len(norms.squares) == 2
    size = tiny_pipe.unet.config.sample_size
    for name, squares in zip(layers, norms.squares[0]):
        level = int(name.split(".")[1]) if name.startswith("down") else None
        tokens = (size // 2 ** level) ** 2 if level is not None else None
        if tokens:  # every input row has length 1: the squares add up to the rows seen
            assert squares.sum().item() == pytest.approx(2 * 2 * tokens)  # 2 prompts x 2 guidance halves
    assert norms.unet_sample_forwards == 2 * 2 * 2


def test_subset_is_seeded():
    assert wanda.choose_subset(24, 10, 0) == wanda.choose_subset(24, 10, 0) != wanda.choose_subset(24, 10, 1)
    assert len(set(wanda.choose_subset(24, 10, 0))) == 10
    with pytest.raises(ValueError, match="--subset_size 30"):
        wanda.choose_subset(24, 30)


def test_script7_prunes_only_masked_ffn_weights_and_the_folder_reloads(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "pruned")
    summary = prune_script.main(["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", out,
                                 "--subset_size", "2", "--sparsity", "0.1", "--calls", "2", "--steps", "5"])
    assert summary["pruned_weights"] > 0 and len(summary["rows"]) == 2
    before = StableDiffusionPipeline.from_pretrained(tiny_model_dir).unet.state_dict()
    after = StableDiffusionPipeline.from_pretrained(out).unet.state_dict()
    masks = wanda.load_masks(os.path.join(out, prune.MASKS_NAME))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{name}.weight" for name, m in zip(masks.layers, masks.union) if m.any()}
    for name, mask in zip(masks.layers, masks.union):
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert torch.equal(w1[mask], torch.zeros(int(mask.sum()))) and torch.equal(w1[~mask], w0[~mask])
    assert json.load(open(os.path.join(out, prune.SUMMARY_NAME)))["rows"] == summary["rows"]


def test_a_file_that_is_not_a_mask_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("Caption;URL\n")
    with pytest.raises(ValueError, match="not a Wanda mask file"):
        wanda.load_masks(str(path))


def test_overlap_of_disjoint_subsets_writes_json_and_png(tiny_model_dir, prompt_files, tmp_path):
    from experiments import locality

    result = locality.main(["wanda-overlap", "-v", tiny_model_dir, "-d", prompt_files["unmemorized"],
                            "--unmemorized", prompt_files["unmemorized"], "--subsets", "2", "--subset_size", "2",
                            "--sparsity", "0.1", "--calls", "2", "-o", str(tmp_path)])
    assert len(result["memorized_vs_memorized"]) == 16
    assert all(0 <= v <= 1 for v in result["memorized_vs_memorized"] + result["memorized_vs_unmemorized"])
    assert (tmp_path / "wanda_overlap.png").stat().st_size > 0 and (tmp_path / "wanda_overlap.json").exists()
    with pytest.raises(ValueError, match="need 6 prompts"):
        locality.disjoint_subsets(4, 3, 2, 0)


def test_agreement_ratios_on_scripted_rows():
    from experiments import locality

    per_prompt = lambda values: {"per_prompt": {"SSIM_Orig": dict(enumerate(values))}}
    report = {"columns": ["neurons", "SSIM_Orig"], "rows": {
        locality.PLAIN: per_prompt([0.8, 0.8, 0.8]), locality.NEMO: per_prompt([0.2, 0.2, 0.78]),
        locality.PRUNED: per_prompt([0.8, 0.3, 0.4]), locality.BOTH: per_prompt([0.2, 0.2, 0.1])}}
    result = locality.agreement_from(report, {}, pruned_on={1})
    # prompt 0: Wanda did nothing, NeMo's drop is all left; prompt 1: both remove the same part;
    # prompt 2: NeMo dropped too little to divide by
    assert result["per_prompt"]["nemo_left_on_pruned"] == {0: pytest.approx(1.0), 1: pytest.approx(1 / 6)}
    assert result["per_prompt"]["wanda_left_with_nemo"] == {1: pytest.approx(0.0), 2: pytest.approx(1.7)}
