"""Adversarial fine-tuning's recipe knobs (utils/methods/dori) on the tiny pipeline, and
the trade-off figure."""

import pytest
import torch
from PIL import Image

from metrics import plots
from testbed.synthetic_data import write_ordinary_pairs
from utils.diffusion import encode_prompts
from utils.methods.dori import attack, finetuning


def test_the_empty_caption_share_replaces_captions_by_the_empty_prompt(tiny_pipe, tmp_path):
    pairs = write_ordinary_pairs(str(tmp_path / "pairs"), 4, seed=0, draw_seed=0)
    empty = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, [""])[0]
    _, all_empty = finetuning.utility_sampler(tiny_pipe, pairs, 6, empty_caption_share=1.0)(torch.Generator().manual_seed(0))
    _, none_empty = finetuning.utility_sampler(tiny_pipe, pairs, 6, empty_caption_share=0.0)(torch.Generator().manual_seed(0))
    assert all(torch.equal(row, empty) for row in all_empty)
    assert not any(torch.equal(row, empty) for row in none_empty)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        finetuning.utility_sampler(tiny_pipe, pairs, 2, empty_caption_share=1.5)


def _finetuned_weights(pipe, utility, weight, updates=1, distillation_weight=0.0):
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    latent = attack.image_latents(pipe, [Image.new("RGB", (48, 48), (200, 30, 30))])
    target = finetuning.FinetuneTarget(latent, encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a red cat"]),
                                 attack.image_latents(pipe, [Image.new("RGB", (48, 48), (90, 90, 90))]))
    finetuning.adversarial_finetune(pipe, [target] * updates, utility, epochs=1, learning_rate=1e-3, attack_steps=1,
                              attack_batch=2, utility_weight=weight, distillation_weight=distillation_weight)
    assert all(p.grad is None for p in pipe.unet.parameters())  # no U-Net-sized gradient left behind
    tuned = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.unet.load_state_dict(state)
    return tuned


def test_the_utility_weight_scales_what_the_utility_pairs_move(tiny_pipe, tmp_path):
    pairs = [finetuning.utility_sampler(tiny_pipe, write_ordinary_pairs(str(tmp_path / f"p{seed}"), 4, 0, seed), 2)
             for seed in (0, 1)]
    unweighted = [_finetuned_weights(tiny_pipe, sampler, 0.0) for sampler in pairs]
    weighted = [_finetuned_weights(tiny_pipe, sampler, 1.0) for sampler in pairs]
    assert all(torch.equal(unweighted[0][k], unweighted[1][k]) for k in unweighted[0])  # the pairs do nothing
    assert any(not torch.equal(weighted[0][k], weighted[1][k]) for k in weighted[0])


def test_tradeoff_figure_is_written(tmp_path):
    utility = lambda a, k: {"A_color": a, "KID_pix": k}
    names = {"A_color": "A_color", "KID_pix": "KID_pix"}
    points = [(1, utility(0.1, 9.0), 0.2), (4, utility(0.3, 8.0), 0.4)]
    references = {"unmodified": (utility(0.3, 8.0), 1.0), "NeMo": (utility(0.0, 30.0), 0.6)}
    one = Image.open(plots.tradeoff({"utility_weight": points}, references, {"A_color": "A_color"}, str(tmp_path / "1.png")))
    both = Image.open(plots.tradeoff({"utility_weight": points}, references, names, str(tmp_path / "2.png")))
    assert one.size[0] > 100 and both.size[0] > 1.8 * one.size[0]  # a panel per measure


def test_distillation_is_zero_for_the_model_itself_and_holds_the_weights_near_it(tiny_pipe, tmp_path):
    import copy

    sampler = finetuning.utility_sampler(tiny_pipe, write_ordinary_pairs(str(tmp_path / "pairs"), 4, 0, 0), 2)
    latents, embeddings = sampler(torch.Generator().manual_seed(0))
    same = finetuning.distillation_loss(tiny_pipe, copy.deepcopy(tiny_pipe.unet), latents, embeddings,
                                  torch.Generator().manual_seed(0))
    assert same.item() == 0
    start = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    distance = lambda weights: sum(((weights[k] - start[k]) ** 2).sum().item() for k in start)
    free = distance(_finetuned_weights(tiny_pipe, sampler, 1.0, updates=4))
    anchored = distance(_finetuned_weights(tiny_pipe, sampler, 1.0, updates=4, distillation_weight=1e3))
    assert 0 < anchored < free


def test_tradeoff_refuses_a_malformed_recipe_before_any_work(tmp_path):
    from testbed import tradeoff

    with pytest.raises(ValueError, match="NAME=VALUE"):
        tradeoff.main(["--values", "0,1", "--recipe", "utility_batch", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="at least one value"):
        tradeoff.main(["--values", ",", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="epochs is set by --epochs"):
        tradeoff.main(["--values", "0", "--recipe", "epochs=2", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="utility_batch is set by --values"):
        tradeoff.main(["--knob", "utility_batch", "--values", "4", "--recipe", "utility_batch=8", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="--utility"):
        tradeoff.main(["--values", "0", "--utility", "FID", "--output", str(tmp_path)])
    assert not any(tmp_path.iterdir())
