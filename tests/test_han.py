"""Han et al.'s initial noise adjustment (NeurIPS 2025) on the tiny pipeline: both variants
against their code restated (hygnhan/init_noise_diffusion_memorization, local_sd_pipeline.py),
the batch-wise guidance schedule, script 4 with each flag, and Table 1's rows."""

import argparse
import json
import os

import numpy as np
import pytest
import torch

from experiments import generate
from experiments.rows import table_rows
from tests.conftest import script
from utils import cli
from utils.diffusion import encode_prompts
from utils.generation import (RECORDS_NAME, PromptCondition, _groups, caption_condition, generate_batch,
                              generation_latents)
from utils.methods import MITIGATIONS
from utils.methods import han as han_defaults
from utils.methods.han import initial_noise as han
from utils.models import frozen

GEN = ["--steps", "3", "-n", "2"]


def embed(pipe, caption):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption])


def prompt_embeds(pipe, embedding, n):
    """Their pipeline's ``prompt_embeds``: n empty-prompt rows, then n caption rows."""
    return torch.cat([embed(pipe, "").expand(n, -1, -1), embedding.expand(n, -1, -1)])


def authors_batch_wise(pipe, embedding, latents, steps, rho, gamma, adj_iters):
    """``adj_init_noise_batch_wise`` restated: at timesteps[0], no gradient, per latent
    delta_hat = rho eps_tilde / ||eps_tilde|| and latents - gamma (eps_tilde(x + delta_hat) - eps_tilde(x))."""
    unet, scheduler = pipe.unet, pipe.scheduler
    condition = prompt_embeds(pipe, embedding, len(latents))
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        for _ in range(adj_iters):
            noise_pred_uncond, noise_pred_text = unet(torch.cat([latents] * 2), t, encoder_hidden_states=condition).sample.chunk(2)
            eps_tilde = noise_pred_text - noise_pred_uncond
            eps_tilde_mag = torch.sqrt(torch.sum(eps_tilde ** 2, dim=(1, 2, 3), keepdim=True))
            delta_hat = rho * (eps_tilde / eps_tilde_mag)
            moved_uncond, moved_text = unet(torch.cat([latents + delta_hat] * 2), t, encoder_hidden_states=condition).sample.chunk(2)
            latents = latents - gamma * ((moved_text - moved_uncond) - eps_tilde)
    return latents


def authors_per_sample(pipe, embedding, latents, steps, lr, optim_iters, target_loss):
    """``adj_init_noise_per_sample`` restated for each latent as their ``__call__`` loops over
    them: at timesteps[0] (``target_steps=[0]``) AdamW on torch.norm(eps_text - eps_uncond),
    the loss checked against the target before each update. Returns the latents and the losses.
    The U-Net is frozen here so that the fixture's parameters collect no gradient (their code
    leaves them unfrozen; the latents' gradient is the same)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    condition = prompt_embeds(pipe, embedding, 1)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    adjusted, all_losses = [], []
    with frozen(unet):
        for sample_idx in range(len(latents)):
            latent = latents[sample_idx:sample_idx + 1].clone()
            latent.requires_grad = True
            latents_optim = torch.optim.AdamW([latent], lr=lr)
            losses = []
            for _ in range(optim_iters):
                latent_model_input = scheduler.scale_model_input(torch.cat([latent] * 2), t)
                noise_pred_uncond, noise_pred_text = unet(latent_model_input, t, encoder_hidden_states=condition).sample.chunk(2)
                loss = torch.norm(noise_pred_text - noise_pred_uncond, p=2).mean()
                losses.append(loss.item())
                if loss.item() <= target_loss:
                    break
                latents_optim.zero_grad()
                loss.backward()
                latents_optim.step()
            adjusted.append(latent.detach())
            all_losses.append(losses)
    return torch.cat(adjusted), all_losses


def test_batch_wise_is_the_authors_adjustment(tiny_pipe):
    embedding = embed(tiny_pipe, "the famous cat poster")
    latents = generation_latents(tiny_pipe.unet, num_samples=3)
    expected = authors_batch_wise(tiny_pipe, embedding, latents, 50, 50.0, 0.7, 2)
    result = han.batch_wise_adjustment(tiny_pipe, embedding, latents, steps=50)  # the authors' defaults
    assert torch.equal(result.latents, expected)  # the same operations in the same order
    assert not torch.allclose(result.latents, latents, atol=1e-3)
    assert result.unet_sample_forwards == 2 * 2 * 2 * 3 and result.unet_sample_backwards == 0
    assert result.updates == [2, 2, 2] and len(result.norms) == 2 and len(result.norms[0]) == 3


def test_batch_wise_moves_each_latent_on_its_own(tiny_pipe):
    """Their batch (one call's latents, the prompt's n at -b 1) couples nothing: every latent
    ends where it ends alone (up to the rounding of another U-Net batch size)."""
    embedding = embed(tiny_pipe, "a red house painting")
    latents = generation_latents(tiny_pipe.unet, num_samples=3)
    together = han.batch_wise_adjustment(tiny_pipe, embedding, latents, steps=10).latents
    alone = han.batch_wise_adjustment(tiny_pipe, embedding, latents[1:2], steps=10).latents
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)


def test_per_sample_is_the_authors_adjustment(tiny_pipe):
    weights = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    flags = [(p.requires_grad, p.grad) for p in tiny_pipe.unet.parameters()]
    embedding = embed(tiny_pipe, "the famous cat poster")
    latents = generation_latents(tiny_pipe.unet, num_samples=2)
    expected, losses = authors_per_sample(tiny_pipe, embedding, latents, 50, 0.01, 4, 0.0)
    result = han.per_sample_adjustment(tiny_pipe, embedding, latents, steps=50, max_iterations=4, target_loss=0.0)
    assert torch.equal(result.latents, expected)  # the same operations in the same order
    assert result.norms == [[l[0] for l in losses], [l[-1] for l in losses]]
    assert losses[0][-1] < losses[0][0] and losses[1][-1] < losses[1][0]  # the loss falls
    assert result.updates == [4, 4]
    assert result.unet_sample_forwards == 2 * 2 * 4 and result.unet_sample_backwards == 2 * 2 * 4
    assert all(torch.equal(v, weights[k]) for k, v in tiny_pipe.unet.state_dict().items())
    assert all(p.requires_grad == flag and p.grad is grad for p, (flag, grad) in zip(tiny_pipe.unet.parameters(), flags))


def test_per_sample_stops_each_latent_at_its_own_target(tiny_pipe):
    embedding = embed(tiny_pipe, "a red house painting")
    latents = generation_latents(tiny_pipe.unet, num_samples=2)
    _, losses = authors_per_sample(tiny_pipe, embedding, latents, 50, 0.01, 6, 0.0)
    target = (losses[0][2] + losses[0][3]) / 2  # latent 0 meets it after 3 updates
    expected, stopped = authors_per_sample(tiny_pipe, embedding, latents, 50, 0.01, 6, target)
    result = han.per_sample_adjustment(tiny_pipe, embedding, latents, steps=50, max_iterations=6, target_loss=target)
    assert torch.equal(result.latents, expected)
    assert result.updates == [len(l) - (l[-1] <= target) for l in stopped] and result.updates[0] == 3
    evaluations = sum(map(len, stopped))
    assert result.unet_sample_forwards == 2 * evaluations and result.unet_sample_backwards == 2 * sum(result.updates)


def authors_generation(pipe, embedding, latents, steps, guidance_scale, apply_cfg_step):
    """Their denoising loop under ``--batch_wise``: the unconditional prediction alone while
    i <= apply_cfg_step, then uncond + g (text - uncond); DDIM with eta 0; decoded."""
    unet, scheduler = pipe.unet, pipe.scheduler
    condition = prompt_embeds(pipe, embedding, len(latents))
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred_uncond, noise_pred_text = unet(latent_model_input, t, encoder_hidden_states=condition).sample.chunk(2)
            if i <= apply_cfg_step:
                noise_pred = noise_pred_uncond
            else:
                noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="pil")


def pixels(images):
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_batch_wise_generation_is_unguided_until_apply_cfg_step(tiny_pipe):
    caption = "the famous cat poster"
    latents = generation_latents(tiny_pipe.unet, num_samples=2)
    args = argparse.Namespace(steps=5, guidance_scale=7.0, han_apply_cfg_step=2, han_rho=50.0, han_gamma=0.7,
                              han_iterations=2)
    condition = han.prepare_batch_wise(tiny_pipe, args)(0, caption, latents)
    assert [condition.guidance(i) for i in range(5)] == [0.0, 0.0, 0.0, 7.0, 7.0]
    ours = generate_batch(tiny_pipe, [condition], latents, steps=5, guidance_scale=7.0)[0]
    theirs = authors_generation(tiny_pipe, embed(tiny_pipe, caption), condition.latents.clone(), 5, 7.0, 2)
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1  # the same computation; PIL rounding
    plain = authors_generation(tiny_pipe, embed(tiny_pipe, caption), condition.latents.clone(), 5, 7.0, -1)
    assert np.abs(pixels(ours) - pixels(plain)).max() > 1  # the delay matters
    # prompts of the same run share a pipeline call (the same schedule), each with its own latents
    other = han.prepare_batch_wise(tiny_pipe, args)(1, "a red house painting", latents)
    assert _groups([condition, condition, PromptCondition(condition.embedding)]) == [[0, 1], [2]]
    assert _groups([condition, other]) == [[0, 1]]
    assert not torch.equal(condition.latents, other.latents)


def test_batch_wise_needs_guidance(tiny_pipe):
    args = argparse.Namespace(steps=5, guidance_scale=1.0, han_apply_cfg_step=4)
    with pytest.raises(ValueError, match="--han_batch_wise .* -g above 1"):
        han.prepare_batch_wise(tiny_pipe, args)


def read_records(folder):
    return [json.loads(line) for line in open(os.path.join(folder, RECORDS_NAME))]


def test_script4_generates_with_batch_wise_adjustment(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "batch_wise")
    script[4].main(["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", out, "--han_batch_wise",
                    "--han_apply_cfg_step", "0", *GEN])
    assert len([f for f in os.listdir(out) if f.endswith(".jpg")]) == 4 * 2
    records = read_records(out)
    assert len(records) == 4
    assert records[0]["mitigation_unet_sample_forwards"] == 2 * 2 * 2 * 2  # 2 updates of 2 calls on [x, x]
    assert records[0]["mitigation_unet_sample_backwards"] == 0 and records[0]["mitigation_seconds"] > 0
    assert len(records[0]["han_latent_shift"]) == 2 and min(records[0]["han_latent_shift"]) > 0


def test_script4_generates_with_per_sample_adjustment(tiny_model_dir, prompt_files, tmp_path):
    out = str(tmp_path / "per_sample")
    script[4].main(["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", out, "--han_per_sample",
                    "--han_max_iterations", "2", "--han_target_loss", "0", "--limit", "2", *GEN])
    assert len([f for f in os.listdir(out) if f.endswith(".jpg")]) == 2 * 2
    record = read_records(out)[0]
    assert record["han_updates"] == [2, 2]
    assert record["mitigation_unet_sample_forwards"] == 2 * 2 * 2 == record["mitigation_unet_sample_backwards"]


def test_flags_are_checked_and_one_variant_at_a_time(tiny_model_dir, prompt_files, tmp_path):
    base = ["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", str(tmp_path / "x"), *GEN]
    for bad in (["--han_batch_wise", "--han_per_sample"], ["--han_batch_wise", "--han_rho", "0"],
                ["--han_per_sample", "--han_max_iterations", "0"], ["--han_batch_wise", "--han_apply_cfg_step", "-1"]):
        with pytest.raises(SystemExit):
            script[4].main(base + bad)


def test_defaults_are_the_authors_and_rows_follow_the_paper(capsys):
    args = cli.step_args(generate.add_args)
    assert (args.han_rho, args.han_gamma, args.han_iterations, args.han_apply_cfg_step) == (50.0, 0.7, 2, 4)
    assert (args.han_target_loss, args.han_learning_rate, args.han_max_iterations) == (0.9, 0.01, 1000)
    assert han_defaults.HAN_TIMESTEP_INDEX == 0
    rows = table_rows()
    names = [row.name for row in rows]
    batch_wise, per_sample = ("initial noise adjustment: batch-wise (Han)", "initial noise adjustment: per-sample (Han)")
    ours = names.index(batch_wise)
    assert names[ours:ours + 2] == [batch_wise, per_sample] and ours > names.index("adversarial fine-tuning")
    assert rows[ours].order == 11 and rows[ours + 1].order == 11.5  # after the paper's rows (0..10)
    for row, flag in zip(rows[ours:ours + 2], ("han_batch_wise", "han_per_sample")):
        assert row.generation() == {flag: True} and row.on_held_out
        assert generate.chosen(cli.step_args(generate.add_args, **row.generation())) is MITIGATIONS[flag]
    with pytest.raises(SystemExit):
        script[4].main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--han_batch_wise settings (defaults: hygnhan/init_noise_diffusion_memorization" in help_text
    assert "--han_per_sample settings" in help_text and "(--target_loss" in help_text


def test_per_sample_condition_has_its_own_latents_and_the_runs_guidance(tiny_pipe):
    """A prompt's own latents are the adjusted ones (the run's stay as drawn); -g at every step."""
    latents = generation_latents(tiny_pipe.unet, num_samples=2)
    drawn = latents.clone()
    args = argparse.Namespace(steps=3, guidance_scale=7.0, han_learning_rate=0.01, han_max_iterations=1,
                              han_target_loss=0.0)
    condition = han.prepare_per_sample(tiny_pipe, args)(0, "a green dog", latents)
    assert torch.equal(latents, drawn) and condition.guidance is None
    assert condition.latents.shape == latents.shape and not torch.equal(condition.latents, latents)
    assert torch.equal(condition.embedding, caption_condition(tiny_pipe, "a green dog").embedding)
