"""Jain et al.'s guidance transition points (utils/methods/jain) against their code
(anubhav1997/mitigating_memorization, commit 44eeb2e), restated here: the static schedule and
loop of generate_test_dataset_stp.py, the dynamic one of generate_test_dataset_dtp.py."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

import testbed
from experiments import generate
from experiments.rows import table_rows
from testbed.components import SD14_SCHEDULER_CONFIG
from tests.conftest import script
from utils import cli
from utils.diffusion import encode_prompts
from utils.files import read_prompts
from utils.generation import RECORDS_NAME, PromptCondition, generate_batch, generation_latents
from utils.hooks import edit_calls
from utils.methods import MITIGATIONS
from utils.methods.jain import guidance as jain
from utils.models import load_pipeline


def script4_args(**values):
    return cli.step_args(generate.add_args, **values)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


# ---------------------------------------------------------------------------------------
# Their code, restated (batch of one image as theirs; CFG_scheduling 'static', their default)

def their_scale(t, guidance_change_step, guidance_scale, guidance_scale_later):
    """generate_test_dataset_stp.py: the scale of the step at timestep t."""
    if t > guidance_change_step:
        return guidance_scale
    return guidance_scale_later


def their_embeddings(pipe, caption):
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    text_input = tokenizer([caption], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
    text_embeddings = text_encoder(text_input.input_ids)[0]
    uncond_input = tokenizer([""], padding="max_length", max_length=text_input.input_ids.shape[-1], return_tensors="pt")
    return torch.cat([text_encoder(uncond_input.input_ids)[0], text_embeddings])


def their_decode(pipe, latents):
    images = pipe.vae.decode(1. / pipe.vae.config.scaling_factor * latents).sample
    decoded = []
    for image in images:
        image = (image / 2 + 0.5).clamp(0, 1).squeeze()
        decoded.append((image.permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy().astype(np.int16))
    return np.stack(decoded)


def unet_inputs(pipe, run):
    """(what ``run()`` returns, the latents of every U-Net call it made): the x_t each step
    starts from, so a step's result is compared where the next step reads it."""
    seen = []

    def keep(args, kwargs, _name):
        seen.append((args[0] if args else kwargs["sample"]).clone())  # [2b, 4, h, w]
        return args, kwargs

    with edit_calls({"unet": pipe.unet}, keep):
        result = run()
    return result, seen


@torch.no_grad()
def their_static_image(pipe, caption, latents, steps, guidance_change_step, guidance_scale, guidance_scale_later):
    """generate_test_dataset_stp.py's loop for latents [b, 4, h, w] on the pipeline's
    scheduler (theirs runs b = 1; nothing in it mixes the images of a batch)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    text_embeddings = their_embeddings(pipe, caption).repeat_interleave(len(latents), 0)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    ts = scheduler.timesteps
    t_index = 0
    while t_index < len(ts):
        t = ts[t_index]
        t_index += 1
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep=t)
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        if t == guidance_change_step:  # their re-grid: the suite refuses such a change step
            scheduler.set_timesteps(200)
            ts = scheduler.timesteps
            t_index = min(range(len(ts)), key=lambda i: abs(ts[i] - t))
            scheduler._step_index = t_index - 1
            t = ts[t_index]
        guidance_scale_new = their_scale(t, guidance_change_step, guidance_scale, guidance_scale_later)
        noise_pred = noise_pred_uncond + guidance_scale_new * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return their_decode(pipe, latents)


@torch.no_grad()
def their_dynamic_image(pipe, caption, latents, steps, before=1.0, after=7.5):
    """generate_test_dataset_dtp.py's loop for one image [1, 4, h, w]: (image, transition_point)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    text_embeddings = their_embeddings(pipe, caption)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    transition_point = -1
    diff_value_prev = -1
    diff_value_prev_prev = -1
    for t in scheduler.timesteps:
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep=t)
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        diff_current = torch.norm(noise_pred_uncond - noise_pred_text)
        if transition_point == -1 and diff_current > diff_value_prev and diff_value_prev_prev > diff_value_prev:
            transition_point = t
            guidance_scale = after
        elif transition_point != -1:
            guidance_scale = after
        else:
            guidance_scale = before
        diff_value_prev_prev = diff_value_prev
        diff_value_prev = diff_current
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return their_decode(pipe, latents), int(transition_point)


# ---------------------------------------------------------------------------------------
# Registry, flags, schedules (torch-free parts and the schedule alone)

def test_three_mitigations_with_their_rows_and_the_readme_defaults(capsys):
    assert {"jain_static", "jain_opposite", "jain_dynamic"} <= set(MITIGATIONS)
    rows = {row.name: row for row in table_rows()}
    assert rows["guidance transition point: static (Jain)"].order == 12
    assert rows["opposite guidance (Jain)"].order == 12.5
    assert rows["guidance transition point: dynamic (Jain)"].order == 12.7
    for name, flag in (("guidance transition point: static (Jain)", "jain_static"),
                       ("opposite guidance (Jain)", "jain_opposite"),
                       ("guidance transition point: dynamic (Jain)", "jain_dynamic")):
        assert rows[name].generation() == {flag: True} and rows[name].on_held_out
        assert generate.chosen(script4_args(**rows[name].generation())) is MITIGATIONS[flag]
    args = script4_args()
    assert (args.jain_static_change_step, args.jain_static_guidance_scale) == (500, 0.0)
    assert (args.jain_opposite_change_step, args.jain_opposite_guidance_scale) == (650, -2.0)
    assert args.jain_dynamic_guidance_scale == 1.0 and args.jain_guidance_scale_later is None
    assert jain.later_scale(args) == args.guidance_scale == 7.0
    assert jain.later_scale(script4_args(jain_guidance_scale_later=7.5)) == 7.5
    with pytest.raises(SystemExit):
        script[4].main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "settings (defaults: anubhav1997/mitigating_memorization README commands" in help_text
    assert "(their --guidance_change_step)" in help_text and "(their --guidance_scale_later, 7.5)" in help_text


def test_their_schedule_on_sd_v14_ddim_50_steps():
    """SD v1.4's DDIM schedule (981, 961, ..., 1): 25 steps without guidance above 500 and 17
    with -2 above 650, as their branch computes at each timestep."""
    timesteps = jain.schedule_timesteps(DDIMScheduler(**SD14_SCHEDULER_CONFIG), 50)
    assert timesteps[0] == 981 and timesteps[-1] == 1 and len(timesteps) == 50
    for change, before in ((500, 0.0), (650, -2.0)):
        ours = jain.transition_scales(timesteps, change, before, 7.5)
        assert list(ours) == [their_scale(t, change, before, 7.5) for t in timesteps]
    assert jain.transition_scales(timesteps, 500, 0.0, 7.5).count(0.0) == 25
    assert jain.transition_scales(timesteps, 650, -2.0, 7.5).count(-2.0) == 17


def test_a_change_step_on_a_timestep_is_refused():
    """Their README's static command on their DPM-Solver schedule: 500 is its 26th timestep,
    where their loop switches to a 200-step schedule."""
    dpm = DPMSolverMultistepScheduler.from_config(SD14_SCHEDULER_CONFIG)
    timesteps = jain.schedule_timesteps(dpm, 50)
    assert timesteps[25] == 500
    with pytest.raises(ValueError, match="the change step 500 is a timestep .* 200-step schedule"):
        jain.transition_scales(timesteps, 500, 0.0, 7.5)
    assert jain.transition_scales(timesteps, 650, -2.0, 7.5).count(-2.0) == 18  # 999 ... 659


def norms_input(norms):
    """Predictions [1, 1, 1, 1] with ||eps_u - eps_c|| = each norm, one step each."""
    return [(torch.full((1, 1, 1, 1), float(d)), torch.zeros(1, 1, 1, 1)) for d in norms]


@pytest.mark.parametrize("norms, transition", [
    ([5, 3, 4, 2, 6], 2),  # the rise at step 2 after the minimum at step 1
    ([3, 5, 4, 6, 1], 3),  # step 1's rise follows no fall
    ([5, 4, 3, 2, 1], None),  # no minimum: the before-scale throughout
    ([5, 3, 3, 4, 4], None),  # ties are no minimum (strict comparisons)
    ([1, 2, 3, 4, 5], None),
])
def test_the_dynamic_rule_on_given_norms(norms, transition):
    rule = jain.DynamicTransition(1.0, 7.5)
    scales = [rule.scales(u, c).item() for u, c in norms_input(norms)]
    assert rule.transition_steps() == [transition]
    expected = [1.0] * len(norms) if transition is None else [1.0] * transition + [7.5] * (len(norms) - transition)
    assert scales == expected


def test_the_dynamic_rule_is_per_image():
    rule = jain.DynamicTransition(1.0, 7.5)
    for a, b in [(5, 1), (3, 2), (4, 3), (2, 4)]:
        rule.scales(torch.tensor([a, b], dtype=torch.float32).view(2, 1), torch.zeros(2, 1))
    assert rule.transition_steps() == [2, None]


# ---------------------------------------------------------------------------------------
# Their loops against the suite's generation

def static_images(pipe, args, caption, latents):
    condition = (jain.prepare_opposite if args.jain_opposite else jain.prepare_static)(pipe, args)(0, caption, latents)
    images = generate_batch(pipe, [condition], latents, steps=args.steps, guidance_scale=args.guidance_scale)[0]
    return condition, images


@pytest.mark.parametrize("variant, change, before", [("jain_static", 500.0, 0.0), ("jain_opposite", 650.0, -2.0)])
def test_their_static_loop_is_the_suites_schedule(tiny_pipe, variant, change, before):
    """Their README's two commands on the tiny model's 6-step DDIM schedule (831, 665, 499, ...)."""
    steps, caption = 6, "the famous cat poster"
    prefix = variant.removeprefix("jain_")
    args = script4_args(steps=steps, guidance_scale=7.0, **{variant: True, f"jain_{prefix}_change_step": change,
                                                            f"jain_{prefix}_guidance_scale": before})
    latents = generation_latents(tiny_pipe.unet, 0, 2)
    (condition, ours), our_steps = unet_inputs(tiny_pipe, lambda: static_images(tiny_pipe, args, caption, latents))
    theirs, their_steps = unet_inputs(tiny_pipe, lambda: their_static_image(tiny_pipe, caption, latents, steps, change,
                                                                            before, 7.0))
    assert len(our_steps) == len(their_steps) == steps
    assert all(torch.equal(a, b) for a, b in zip(our_steps, their_steps))  # every step to the last digit
    assert np.abs(pixels(ours) - theirs).max() <= 1  # their uint8 truncates, the pipeline rounds
    assert jain.schedule_timesteps(tiny_pipe.scheduler, steps) == (831, 665, 499, 333, 167, 1)
    assert [condition.guidance(i) for i in range(steps)] == [before] * 2 + [7.0] * 4
    assert condition.record["jain_transition_step"] == 2 and condition.record["jain_transition_timestep"] == 499
    assert condition.record["unet_sample_forwards_per_image"] == 2 * steps
    plain = generate_batch(tiny_pipe, [PromptCondition(condition.embedding)], latents, steps=steps)[0]
    assert np.abs(pixels(plain) - theirs).max() > 1  # the schedule changed the images


def test_their_dynamic_loop_is_the_suites():
    """A test-bed prompt (||eps_u - eps_c|| of the tiny random model falls throughout) whose
    first image passes a minimum mid-run and whose second never does in 6 steps; one image a
    call, as theirs (their norm is the batch's)."""
    pipe, steps = load_pipeline(testbed.MODEL_DIR, torch.device("cpu")), 6
    caption = read_prompts(testbed.UNMEMORIZED_PROMPTS)["Caption"][1]
    args = script4_args(steps=steps, jain_dynamic=True, jain_guidance_scale_later=7.5)
    transitions = []
    for k, latents in enumerate(generation_latents(pipe.unet, 2, 2).split(1)):
        condition = jain.prepare_dynamic(pipe, args)(k, caption, latents)
        ours, our_steps = unet_inputs(pipe, lambda: generate_batch(pipe, [condition], latents, steps=steps)[0])
        (theirs, point), their_steps = unet_inputs(pipe, lambda: their_dynamic_image(pipe, caption, latents, steps))
        assert len(our_steps) == len(their_steps) == steps
        assert all(torch.equal(a, b) for a, b in zip(our_steps, their_steps))  # every step to the last digit
        assert np.abs(pixels(ours) - theirs).max() <= 1  # their uint8 truncates, the pipeline rounds
        assert condition.record["jain_transition_timesteps"] == [None if point == -1 else point]
        assert condition.record["unet_sample_forwards_per_image"] == 2 * steps
        transitions += condition.record["jain_transition_steps"]
    assert transitions == [4, None]
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks  # the intervention removed its hook


# ---------------------------------------------------------------------------------------
# Script 4

def records(folder):
    return [json.loads(line) for line in open(os.path.join(folder, RECORDS_NAME))]


def test_script4_runs_each_variant_and_records_its_cost(tiny_model_dir, prompt_files, tmp_path):
    gen = ["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "--steps", "4", "-n", "2", "--limit", "2"]
    out = str(tmp_path / "static")
    script[4].main([*gen, "-o", out, "--jain_static", "-b", "2"])  # two prompts share a call
    assert len([name for name in os.listdir(out) if name.endswith(".jpg")]) == 2 * 2
    for record in records(out):
        assert record["unet_sample_forwards_per_image"] == 8 and record["mitigation_unet_sample_forwards"] == 0
        assert record["seconds"] > 0 and record["jain_guidance_after"] == 7.0
        assert record["jain_transition_step"] == 2  # DDIM, 4 steps: 751, 501 above 500; 251, 1
    out = str(tmp_path / "dynamic")
    script[4].main([*gen, "-o", out, "--jain_dynamic", "-b", "2"])  # two prompts a batch, a call each
    written = records(out)
    assert [len(r["jain_transition_steps"]) for r in written] == [2, 2]
    assert all(r["jain_guidance_before"] == 1.0 and r["unet_sample_forwards_per_image"] == 8 for r in written)


def test_script4_refuses_a_change_step_on_a_timestep_before_writing(tiny_model_dir, prompt_files, tmp_path):
    out = tmp_path / "refused"
    base = ["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "--steps", "4", "-n", "2", "-o", str(out)]
    with pytest.raises(ValueError, match=r"--jain_static_change_step 501 is a timestep .* 200-step schedule"):
        script[4].main([*base, "--jain_static", "--jain_static_change_step", "501"])
    assert not out.exists() or not [name for name in os.listdir(out) if name.endswith(".jpg")]
    for bad in (["--jain_static", "--jain_opposite"], ["--jain_dynamic", "--jain_dynamic_guidance_scale", "x"]):
        with pytest.raises(SystemExit):  # one mitigation at a time; a scale is a number
            script[4].main([*base, *bad])


def test_encode_prompts_is_their_text_conditioning(tiny_pipe):
    caption = "a red house painting"
    embeddings = their_embeddings(tiny_pipe, caption)  # [unconditional, conditional]
    assert torch.equal(embeddings[1:], encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, [caption]))
    assert torch.equal(embeddings[:1], encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, [""]))
