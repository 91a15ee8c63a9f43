"""Asthana & Belagiannis's anisotropy score (script 2 ``--score anisotropy``): restated from
their ``local_model/pipe.py`` (``exp_type == 'det'``) and ``detect_eval.py`` on the tiny
model, its U-Net passes counted, and script 2 end to end."""

import json
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from experiments import detect
from testbed.rehearsal import SD21_SCHEDULER_CONFIG
from tests.conftest import TINY_KERNEL, script
from utils import cli
from utils.diffusion import encode_prompts, initial_latents
from utils.methods import DETECTORS
from utils.methods import anisotropy
from utils.methods.anisotropy import score

CAPTION = "the famous cat poster"


def embed(pipe, caption):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption])


def latents_of(pipe, n, seed=anisotropy.ANISOTROPY_SEED):
    size = pipe.unet.config.sample_size
    return initial_latents(seed, n, (4, size, size))


@torch.no_grad()
def authors_terms(pipe, caption, latents, mode, sd_ver):
    """pipe.py's detection, its first loop step (--hvp_sampling_num 1): both branches on x_T at
    timesteps[0] and at timesteps[-3]; the norm per generation of their SD 1 (epsilon) or SD 2
    (v) branch, the cosine over dim 1 averaged per generation. Returns (norm, cosine) [ipp]."""
    unet, scheduler = pipe.unet, pipe.scheduler
    ipp = len(latents)
    prompt_embeds = torch.cat([embed(pipe, "").repeat(ipp, 1, 1), embed(pipe, caption).repeat(ipp, 1, 1)])
    scheduler.set_timesteps(50)  # the pipeline's num_inference_steps
    timesteps = scheduler.timesteps
    t, t_cosine = timesteps[0], timesteps[-3]
    latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
    latent_model_input_cosine = scheduler.scale_model_input(latent_model_input, t_cosine)
    noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds).sample
    noise_pred_cosine = unet(latent_model_input_cosine, t_cosine, encoder_hidden_states=prompt_embeds).sample
    uc_cos, c_cos = noise_pred_cosine.chunk(2)
    if sd_ver == 1:
        uc_eps, c_eps = noise_pred.chunk(2)
        comb_hvp = c_eps - uc_eps
    else:
        beta_prod = torch.sqrt(1 - scheduler.alphas_cumprod[t])
        beta = torch.sqrt(scheduler.alphas_cumprod[t])
        score_uc, score_c = ((beta * noise_pred - latent_model_input) / (beta_prod ** 2)).chunk(2)
        comb_hvp = score_c - score_uc
    pairs = {"x,c|x": (uc_cos, c_cos - uc_cos), "x,x|c": (c_cos, uc_cos), "x|c,c|x": (c_cos, c_cos - uc_cos)}
    cosine_sim = F.cosine_similarity(*pairs[mode], dim=1)  # [ipp, h, w]
    hvp_metric = torch.norm(comb_hvp.view(ipp, -1), dim=1)
    return hvp_metric, torch.stack([j.mean() for j in cosine_sim])


@contextmanager
def unet_calls():
    """(batch size, timestep) of every U-Net forward while open, any U-Net (a script's own too)."""
    calls = []

    def record(module, args, kwargs, _output):
        if isinstance(module, UNet2DConditionModel):
            sample, timestep = args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"]
            calls.append((len(sample), int(timestep)))

    handle = torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture
def v_pipe(tiny_pipe):
    """The tiny model with SD 2's v-prediction scheduler: its output read as v."""
    components = {**tiny_pipe.components, "scheduler": DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG)}
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("mode", anisotropy.ALIGNMENT_MODES)
def test_terms_are_the_authors_on_an_epsilon_model(tiny_pipe, mode):
    latents = latents_of(tiny_pipe, 3)
    norm, cosine = authors_terms(tiny_pipe, CAPTION, latents, mode, sd_ver=1)
    with unet_calls() as calls:
        terms = score.anisotropy_terms(tiny_pipe, embed(tiny_pipe, CAPTION), latents, steps=50, mode=mode)
    assert torch.equal(terms.norm, norm)
    # the same cosines; the pixel mean of a batch may sum in another order than one generation's
    torch.testing.assert_close(terms.alignment, cosine, rtol=1e-6, atol=1e-7)
    # both branches at the first timestep and at timesteps[-3], on x_T itself
    assert calls == [(6, 981), (6, 41)] and sum(b for b, _ in calls) == score.unet_sample_forwards(3)


def test_terms_are_the_authors_sd2_branch_on_a_v_model(v_pipe):
    latents = latents_of(v_pipe, 2)
    norm, cosine = authors_terms(v_pipe, CAPTION, latents, "x,c|x", sd_ver=2)
    terms = score.anisotropy_terms(v_pipe, embed(v_pipe, CAPTION), latents, steps=50)
    # they scale each branch's output (x_T, the same in both, cancels), we scale their difference
    torch.testing.assert_close(terms.norm, norm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms.alignment, cosine, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pipe_name, sd_ver, weights", [("tiny_pipe", 1, (1.0, 2.0)), ("v_pipe", 2, (1.0, 0.1))])
def test_prompt_score_is_detect_eval_of_the_authors_terms(pipe_name, sd_ver, weights, request):
    """detect_eval.py: gamma_1 * the norm + gamma_2 * the cosine, each averaged over the
    generations (pipe.py's means), with their gammas of SD 1 and SD 2."""
    pipe = request.getfixturevalue(pipe_name)
    args = cli.step_args(detect.add_args, score="anisotropy", anisotropy_samples=2)
    assert score.weights(pipe.scheduler, args) == weights
    per_sample = score.prompt_scores(pipe, None, latents_of(pipe, 2), args, CAPTION)
    norm, cosine = authors_terms(pipe, CAPTION, latents_of(pipe, 2), "x,c|x", sd_ver)
    gamma_1, gamma_2 = weights
    assert per_sample.mean().item() == pytest.approx((gamma_1 * norm.mean() + gamma_2 * cosine.mean()).item(),
                                                     rel=1e-6)
    args = cli.step_args(detect.add_args, score="anisotropy", anisotropy_samples=2, anisotropy_norm_weight=0.0,
                         anisotropy_alignment_weight=1.0)
    assert score.prompt_scores(pipe, None, latents_of(pipe, 2), args, CAPTION).mean().item() == pytest.approx(
        cosine.mean().item(), rel=1e-6)


def test_script2_scores_each_prompt_with_the_authors_seed(tiny_model_dir, tiny_pipe, prompt_files, tmp_path):
    out = str(tmp_path / "anisotropy.csv")
    with unet_calls() as calls:
        threshold = script[2].main(["--prompts", prompt_files["unmemorized"], "--output", out, "-v", tiny_model_dir,
                                    "--score", "anisotropy", "--ssim_kernel_size", str(TINY_KERNEL), "-s", "7"])
    frame = pd.read_csv(out, sep=";")
    assert len(frame) == 4 and [len(json.loads(s)) for s in frame["Sample Scores"]] == [1] * 4  # --anisotropy_samples 1
    assert threshold == pytest.approx(frame["Memorization Score"].mean() + frame["Memorization Score"].std())
    # two U-Net calls per prompt, both branches of the one latent: 4 sample forwards each
    assert len(calls) == 2 * 4 and sum(b for b, _ in calls) == 4 * score.unet_sample_forwards(1)
    # the latents are --anisotropy_seed's (51), whatever -s says
    args = cli.step_args(detect.add_args, score="anisotropy")
    for caption, value in zip(frame["Caption"], frame["Memorization Score"]):
        expected = score.anisotropy_terms(tiny_pipe, embed(tiny_pipe, caption), latents_of(tiny_pipe, 1), steps=50)
        assert value == pytest.approx(expected.score(*score.weights(tiny_pipe.scheduler, args)).item(), abs=1e-6)


def test_the_detector_is_registered_for_script2_and_table1(capsys):
    assert DETECTORS["anisotropy"].comparisons == {"Anisotropy (Asthana & Belagiannis)": ("anisotropy", {})}
    assert DETECTORS["anisotropy"].samples == "anisotropy_samples"
    with pytest.raises(SystemExit):
        script[2].main(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--anisotropy_samples", "--anisotropy_seed", "--anisotropy_mode", "--anisotropy_alignment_weight"):
        assert flag in help_text
    args = cli.step_args(detect.add_args)
    assert (args.anisotropy_samples, args.anisotropy_seed, args.anisotropy_mode) == (1, 51, "x,c|x")
    assert (args.anisotropy_norm_timestep_index, args.anisotropy_alignment_timestep_index) == (0, -3)


def test_bad_inputs_name_the_flag(tiny_pipe):
    latents, embedding = latents_of(tiny_pipe, 1), embed(tiny_pipe, CAPTION)
    with pytest.raises(ValueError, match="--anisotropy_alignment_timestep_index -6 is outside the 5-step schedule"):
        score.anisotropy_terms(tiny_pipe, embedding, latents, steps=5, alignment_index=-6)
    with pytest.raises(ValueError, match="--anisotropy_norm_timestep_index 5 is outside"):
        score.anisotropy_terms(tiny_pipe, embedding, latents, steps=5, norm_index=5)
    sample = DDIMScheduler.from_config({**SD21_SCHEDULER_CONFIG, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="predicts 'sample'"):
        score.check_prediction_type(sample)
