"""The U-Net's output read as noise by the scheduler's prediction type (SD 2.x at 768 px
predicts v): the conversion, and every method that reads noise on a v-predicting model.

A v-predicting model is made from the tiny epsilon model by converting its output to v at
every call (v = sqrt(a_t) eps - sqrt(1 - a_t) x0, x0 from eps): what each method reads as
noise must then be what it reads on the epsilon model.
"""

from contextlib import contextmanager

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

# SD 2.1's scheduler (stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json)
from testbed.rehearsal import SD21_SCHEDULER_CONFIG
from utils.diffusion import denoising_target, encode_prompts, initial_latents, predicted_noise
from utils.generation import generation_latents
from utils.layers import value_layers
from utils.methods.dori import attack as dori
from utils.methods.nemo.noise import prompt_noise_difference
from utils.methods.wen import noise_magnitude as wen


def scheduler_of(kind: str) -> DDIMScheduler:
    return DDIMScheduler.from_config({**SD21_SCHEDULER_CONFIG, "prediction_type": kind})


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_noise_inverts_the_training_target(kind):
    scheduler = scheduler_of(kind)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 500, 961])
    x_t = scheduler.add_noise(x0, noise, t)
    target = denoising_target(scheduler, noise, x0, t)
    expected = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[kind]
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(predicted_noise(scheduler, target, x_t, t), noise, rtol=1e-4, atol=1e-4)
    # one timestep for the whole batch broadcasts too
    one = scheduler.add_noise(x0, noise, torch.tensor([961] * 3))
    torch.testing.assert_close(predicted_noise(scheduler, denoising_target(scheduler, noise, x0, torch.tensor([961] * 3)),
                                               one, torch.tensor(961)), noise, rtol=1e-4, atol=1e-4)


def test_an_unknown_prediction_type_is_an_error():
    scheduler = scheduler_of("epsilon")
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type"):
        predicted_noise(scheduler, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), 1)


@contextmanager
def predicting_v(unet, scheduler):
    """While open, ``unet`` outputs v instead of its epsilon (the same model, SD 2.1's way)."""

    def to_v(_module, args, kwargs, output):
        x_t = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        alpha_bar = scheduler.alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1)
        eps = output[0] if isinstance(output, tuple) else output.sample  # the pipeline asks for tuples
        x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
        if isinstance(output, tuple):
            return (v,)
        output.sample = v
        return output

    handle = unet.register_forward_hook(to_v, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def v_pipe(tiny_pipe):
    """The tiny pipeline's components with SD 2.1's v-prediction scheduler."""
    components = {**tiny_pipe.components, "scheduler": scheduler_of("v_prediction")}
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def test_noise_difference_of_a_v_model_is_its_epsilon_models(tiny_pipe, v_pipe):
    layers = value_layers(tiny_pipe.unet)
    x = initial_latents(0, 2, (4, 24, 24))
    sets = [[[]] * 7, [[1, 2]] + [[]] * 6]
    for guidance in (0.0, 3.0):
        expected = prompt_noise_difference(tiny_pipe, layers, "a red cat", guidance_scale=guidance, normalized=False)
        read = prompt_noise_difference(v_pipe, layers, "a red cat", guidance_scale=guidance, normalized=False)
        with predicting_v(v_pipe.unet, v_pipe.scheduler):
            converted = read(x, sets)
        unconverted = read(x, sets)  # the epsilon model read as v: a different signal
        torch.testing.assert_close(converted, expected(x, sets), rtol=1e-3, atol=1e-3)
        assert not torch.allclose(unconverted, converted, atol=1e-2)


def test_wen_score_and_adjustment_of_a_v_model_are_its_epsilon_models(tiny_pipe, v_pipe):
    embedding = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["the famous cat poster"])
    latents = generation_latents(tiny_pipe.unet, num_samples=2)
    with torch.no_grad():
        expected = wen.noise_magnitude_scores(tiny_pipe, embedding, latents, steps=5, score_steps=2)
        with predicting_v(v_pipe.unet, v_pipe.scheduler):
            scores = wen.noise_magnitude_scores(v_pipe, embedding, latents, steps=5, score_steps=2)
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=1e-3)
    reference = wen.adjust_embedding(tiny_pipe, embedding, latents, max_iterations=3, target_loss=0.0)
    with predicting_v(v_pipe.unet, v_pipe.scheduler):
        adjusted = wen.adjust_embedding(v_pipe, embedding, latents, max_iterations=3, target_loss=0.0)
    assert adjusted.losses == pytest.approx(reference.losses, rel=1e-3)


def test_dori_loss_of_a_v_model_is_its_epsilon_error_over_alpha_bar(tiny_pipe, v_pipe):
    """v - v* = (eps - eps*) / sqrt(a_t) for the converted model, so the v loss of one latent
    is its epsilon loss divided by a_t (t drawn from the same generator)."""
    latent = initial_latents(3, 1, (4, 24, 24))
    embedding = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["a red cat"])
    with torch.no_grad():
        epsilon_loss = dori.denoising_loss(tiny_pipe, latent, embedding, torch.Generator().manual_seed(5))
        with predicting_v(v_pipe.unet, v_pipe.scheduler):
            v_loss = dori.denoising_loss(v_pipe, latent, embedding, torch.Generator().manual_seed(5))
    t = torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(5))
    alpha_bar = v_pipe.scheduler.alphas_cumprod[t].item()
    assert v_loss.item() == pytest.approx(epsilon_loss.item() / alpha_bar, rel=1e-3)
