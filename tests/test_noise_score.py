import pytest
import torch

from utils.diffusion import initial_latents, schedule_timestep
from utils.layers import value_layers
from utils.methods.nemo.noise import UNetCounter, normalize_maps, prompt_noise_difference
from utils.methods.nemo.score import blocked_scores, check_ssim_size, memorization_score, ms_ssim, pairwise_max_scores

KERNEL = 5


def test_sd_detection_timestep_is_961(tiny_pipe):
    assert int(schedule_timestep(tiny_pipe.scheduler, 50, 1)) == 961


def test_initial_latents_are_one_seeded_cpu_draw():
    latents = initial_latents(1, 10, (4, 8, 8))
    assert torch.equal(latents, torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(latents[:3], initial_latents(1, 3, (4, 8, 8)))


def test_normalize_maps_sends_each_map_to_zero_one():
    x = torch.randn(3, 4, 6, 6) * torch.arange(1, 13).reshape(3, 4, 1, 1)
    y = normalize_maps(x)
    assert torch.allclose(y.amin(dim=(-2, -1)), torch.zeros(3, 4))
    assert torch.allclose(y.amax(dim=(-2, -1)), torch.ones(3, 4))
    torch.testing.assert_close(y[1, 2], (x[1, 2] - x[1, 2].min()) / (x[1, 2].max() - x[1, 2].min()))


@torch.no_grad()
def test_noise_difference_is_normalized_eps_minus_latent_in_one_unet_call(tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    noise = prompt_noise_difference(tiny_pipe, layers, "the famous cat poster")
    noise.counter = UNetCounter()
    x = initial_latents(0, 3, (4, 24, 24))
    sets = [[[]] * 7, [[1, 2]] + [[]] * 6]
    deltas = noise(x, sets)
    assert deltas.shape == (2, 3, 4, 24, 24)
    assert (noise.counter.calls, noise.counter.sample_forwards) == (1, 6)
    eps = tiny_pipe.unet(x, 961, encoder_hidden_states=noise.text_embedding.expand(3, -1, -1)).sample
    torch.testing.assert_close(deltas[0], normalize_maps(eps - x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(deltas[0], deltas[1])
    raw = prompt_noise_difference(tiny_pipe, layers, "the famous cat poster", normalized=False)(x)[0]
    torch.testing.assert_close(raw, eps - x, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_guided_noise_difference_combines_conditional_and_unconditional(tiny_pipe):
    layers = value_layers(tiny_pipe.unet)
    guided = prompt_noise_difference(tiny_pipe, layers, "a red cat", guidance_scale=3.0)
    x = initial_latents(0, 2, (4, 24, 24))
    unet = tiny_pipe.unet
    cond = unet(x, 961, encoder_hidden_states=guided.text_embedding.expand(2, -1, -1)).sample
    uncond = unet(x, 961, encoder_hidden_states=guided.uncond_embedding.expand(2, -1, -1)).sample
    torch.testing.assert_close(guided(x)[0], normalize_maps(uncond + 3.0 * (cond - uncond) - x), rtol=1e-4, atol=1e-5)


def test_ms_ssim_of_identical_maps_is_one():
    x = torch.rand(4, 4, 24, 24)
    torch.testing.assert_close(ms_ssim(x, x, KERNEL), torch.ones(4))
    assert ms_ssim(x, torch.rand(4, 4, 24, 24), KERNEL).max() < 0.5


@pytest.mark.parametrize("side,kernel", [(16, 5), (16, 3), (24, 7), (32, 11), (48, 13)])
def test_latent_too_small_for_the_kernel_is_a_clear_error(side, kernel):
    with pytest.raises(ValueError, match=f"latent of {side}x{side} is too small .*--ssim_kernel_size {kernel}"):
        ms_ssim(torch.rand(2, 4, side, side), torch.rand(2, 4, side, side), kernel)


@pytest.mark.parametrize("side,kernel", [(24, 5), (32, 7), (64, 11)])
def test_accepted_sizes_run(side, kernel):
    check_ssim_size(side, kernel)
    ms_ssim(torch.rand(2, 4, side, side), torch.rand(2, 4, side, side), kernel)


def authors_max_pairwise_ssim(noise_diffs, batch_size=None):
    """The authors' pairwise score restated: script 3's ``calculate_max_pairwise_ssim`` (all
    pairs in one MS-SSIM batch) or script 2's loop over ``--batch_size`` pairs at a time."""
    pairs = torch.combinations(torch.arange(len(noise_diffs)), r=2)
    step = batch_size or len(pairs)
    ssim = torch.cat([ms_ssim(noise_diffs[pairs[s:s + step][:, 0]], noise_diffs[pairs[s:s + step][:, 1]], KERNEL)
                      for s in range(0, len(pairs), step)])
    return torch.stack([ssim[(pairs == index).max(-1).values].max() for index in range(len(noise_diffs))])


def test_pairwise_max_scores_are_the_authors_batches():
    torch.manual_seed(0)
    base = torch.rand(1, 4, 24, 24)
    deltas = normalize_maps(torch.cat([base + 0.05 * torch.rand(1, 4, 24, 24), torch.rand(8, 4, 24, 24), base]))
    one_batch = pairwise_max_scores(deltas, KERNEL)
    assert torch.equal(one_batch, authors_max_pairwise_ssim(deltas))
    for pairs_per_batch in (1, 7, 45):
        assert torch.equal(pairwise_max_scores(deltas, KERNEL, pairs_per_batch),
                           authors_max_pairwise_ssim(deltas, pairs_per_batch))
    # the coarser scales take their data range from the batch: pair by pair is another number
    assert not torch.equal(pairwise_max_scores(deltas, KERNEL, 1), one_batch)
    assert memorization_score(deltas, KERNEL) == one_batch.max().item()
    assert one_batch[0] > 0.9 and one_batch[1] < 0.5
    with pytest.raises(ValueError, match="pairs_per_batch must be at least 1"):
        pairwise_max_scores(deltas, KERNEL, 0)


def test_blocked_scores_take_the_max_over_samples():
    unblocked = torch.rand(3, 4, 24, 24)
    blocked = torch.stack([torch.rand(3, 4, 24, 24), torch.cat([torch.rand(2, 4, 24, 24), unblocked[2:]])])
    scores = blocked_scores(unblocked, blocked, KERNEL)
    assert scores[0] < 0.5 and scores[1] == pytest.approx(1.0, abs=1e-4)
