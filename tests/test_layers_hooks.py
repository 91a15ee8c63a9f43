import pytest
import torch

from testbed.components import TinySize, build_unet
from utils.hooks import record_outputs
from utils.layers import validate_neuron_set, value_layers
from utils.methods.nemo.deactivation import deactivate_neurons, deactivate_per_slice
from utils.methods.nemo.export import prune_value_neurons

SD_ORDER = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn2.to_v" for b in range(3) for a in range(2)]
SD_ORDER.append("mid_block.attentions.0.transformer_blocks.0.attn2.to_v")


def unet_inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(batch, 4, size, size, generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return x, text


def no_hooks(unet):
    return all(not m._forward_hooks for m in unet.modules())


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet(TinySize()).eval()


def test_value_layers_are_the_seven_sd_layers_in_execution_order(unet):
    layers = value_layers(unet)
    assert list(layers) == SD_ORDER
    assert [l.out_features for l in layers.values()] == [8, 8, 16, 16, 16, 16, 16]


def test_value_layers_follow_execution_order_not_names(unet):
    # diffusers registers up_blocks before mid_block; the discovery must still put
    # the mid block last, as in a forward pass
    called = []
    layers = value_layers(unet)
    handles = [m.register_forward_hook(lambda m, i, o, n=n: called.append(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            unet(*unet_inputs(unet)[:1], 10, encoder_hidden_states=unet_inputs(unet)[1])
    finally:
        for h in handles:
            h.remove()
    assert called == list(layers)


def test_hooks_are_removed_when_the_body_raises(unet):
    layers = value_layers(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with deactivate_neurons(layers, [[0]] + [[]] * 6):
            with record_outputs(layers):
                assert not no_hooks(unet)
                raise RuntimeError("boom")
    assert no_hooks(unet)


def test_nested_contexts_remove_only_their_own_hooks(unet):
    layers = value_layers(unet)
    with deactivate_neurons(layers, [[0]] + [[]] * 6):
        with record_outputs(layers):
            pass
        assert all(len(m._forward_hooks) == 1 for m in layers.values())
    assert no_hooks(unet)


@torch.no_grad()
def test_deactivation_with_factor_zero_equals_zeroed_rows(unet):
    x, text = unet_inputs(unet)
    neurons = [[0, 3], [], [5], [], [], [1, 2, 15], [7]]
    with deactivate_neurons(value_layers(unet), neurons, 0.0):
        hooked = unet(x, 500, encoder_hidden_states=text).sample
    pruned = build_unet(TinySize()).eval()
    pruned.load_state_dict(unet.state_dict())
    prune_value_neurons(pruned, neurons)
    assert torch.equal(hooked, pruned(x, 500, encoder_hidden_states=text).sample)
    assert not torch.equal(hooked, unet(x, 500, encoder_hidden_states=text).sample)


@torch.no_grad()
def test_scaling_factor_scales_recorded_outputs(unet):
    x, text = unet_inputs(unet)
    layers = value_layers(unet)
    with record_outputs(layers) as plain:
        unet(x, 500, encoder_hidden_states=text)
    with deactivate_neurons(layers, [[]] * 6 + [[4]], 0.5), record_outputs(layers) as scaled:
        unet(x, 500, encoder_hidden_states=text)
    name = list(layers)[-1]
    torch.testing.assert_close(scaled[name][0][..., 4], 0.5 * plain[name][0][..., 4])
    torch.testing.assert_close(scaled[name][0][..., 5], plain[name][0][..., 5])


@torch.no_grad()
def test_per_slice_sets_equal_separate_runs(unet):
    x, text = unet_inputs(unet, batch=2)
    layers = value_layers(unet)
    sets = [[[1], [], [], [], [], [], []], [[], [], [], [], [2, 3], [], [9]], [[]] * 7]
    separate = []
    for neurons in sets:
        with deactivate_neurons(layers, neurons):
            separate.append(unet(x, 500, encoder_hidden_states=text).sample)
    with deactivate_per_slice(layers, sets):
        joint = unet(x.repeat(3, 1, 1, 1), 500, encoder_hidden_states=text.repeat(3, 1, 1)).sample
    torch.testing.assert_close(joint, torch.cat(separate), rtol=1e-5, atol=1e-5)


def test_batch_not_divisible_by_sets_is_an_error(unet):
    x, text = unet_inputs(unet, batch=3)
    with pytest.raises(ValueError, match="cannot be cut into 2"):
        with deactivate_per_slice(value_layers(unet), [[[1]] + [[]] * 6] * 2):
            unet(x, 500, encoder_hidden_states=text)
    assert no_hooks(unet)


@pytest.mark.parametrize("bad", ["[[1]]", [[1]] * 6, [[0], [], [], [], [], [], [99]], [[-1]] + [[]] * 6, [["a"]] + [[]] * 6])
def test_malformed_neuron_sets_are_rejected(bad):
    with pytest.raises(ValueError, match="neuron"):
        validate_neuron_set(bad, [8, 8, 16, 16, 16, 16, 16], "neuron list")
