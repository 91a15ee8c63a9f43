import pytest
import torch
from torch import nn

from tests.conftest import upstream_file
from utils.diffusion import encode_prompts
from utils.hooks import record_outputs
from utils.layers import value_layers
from utils.methods.nemo.statistics import (NeuronStatistics, compute_statistics, load_statistics, save_statistics,
                                           text_activations)

SD14_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280]


def sd_shaped_layers(widths=SD14_WIDTHS):
    return {f"layer{i}": nn.Linear(768, w, bias=False) for i, w in enumerate(widths)}


@torch.no_grad()
def test_text_activations_equal_those_recorded_in_a_unet_pass(tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    embedding = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["the famous cat poster", "a dog"])
    from_text = text_activations(layers, embedding)
    size = tiny_pipe.unet.config.sample_size
    with record_outputs(layers) as recorded:
        tiny_pipe.unet(torch.randn(2, 4, size, size), 961, encoder_hidden_states=embedding)
    for name, activation in zip(layers, from_text):
        assert activation.shape == (2, layers[name].out_features)
        torch.testing.assert_close(recorded[name][0].abs().mean(dim=1), activation)


@torch.no_grad()
def test_statistics_are_mean_and_unbiased_std_over_prompts(tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    prompts = ["a red cat", "a blue dog", "the green tree", "a photo of a house", "a painting"]
    stats = compute_statistics(tiny_pipe, layers, prompts, "tiny", batch_size=2)
    acts = text_activations(layers, encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, prompts))
    for a, mean, std in zip(acts, stats.means, stats.stds):
        torch.testing.assert_close(mean, a.mean(0))
        torch.testing.assert_close(std, a.std(0), rtol=1e-4, atol=1e-6)
    assert stats.num_prompts == 5 and stats.layer_names == list(layers)


def test_saved_statistics_load_back(tmp_path, tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    stats = NeuronStatistics([torch.rand(l.out_features) for l in layers.values()],
                             [torch.rand(l.out_features) for l in layers.values()], list(layers), "tiny", 3)
    save_statistics(stats, tmp_path / "s.pt")
    loaded = load_statistics(str(tmp_path / "s.pt"), layers)
    assert loaded.model == "tiny" and loaded.num_prompts == 3
    for a, b in zip(loaded.means, stats.means):
        assert torch.equal(a, b)


def test_authors_statistics_file_loads_for_sd_widths():
    stats = load_statistics(upstream_file("statistics_additional_laion_prompts_v1_4.pt"), sd_shaped_layers())
    assert [len(m) for m in stats.means] == SD14_WIDTHS
    assert stats.layer_names is None
    assert all(bool((s > 0).all()) for s in stats.stds)


def test_authors_statistics_do_not_fit_the_tiny_model(tiny_pipe):
    with pytest.raises(ValueError, match="do not match the model's 7 value layers"):
        load_statistics(upstream_file("statistics_additional_laion_prompts_v1_4.pt"), value_layers(tiny_pipe.unet))


def test_statistics_of_other_layers_are_rejected(tmp_path):
    layers = sd_shaped_layers([4, 4])
    torch.save(dict(means=[torch.zeros(4)] * 2, stds=[torch.ones(4)] * 2, layer_names=["x", "y"]), tmp_path / "s.pt")
    with pytest.raises(ValueError, match="computed for layers"):
        load_statistics(str(tmp_path / "s.pt"), layers)


def test_missing_statistics_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="not found; compute it with 1_compute"):
        load_statistics(str(tmp_path / "none.pt"), sd_shaped_layers())
