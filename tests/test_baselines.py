"""The Table 1 baselines on the tiny pipeline: Wen's embedding adjustment and score, Ren's
attention scaling, random tokens."""

import math

import pytest
import torch

from utils.diffusion import encode_prompts
from utils.generation import generation_latents
from utils.methods.random_tokens import tokens as random_tokens
from utils.methods.ren import attention as ren
from utils.methods.wen import noise_magnitude as wen


def no_hooks(module):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def embed(pipe, caption):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption])


def test_wen_adjustment_lowers_its_objective_and_leaves_the_model_alone(tiny_pipe):
    weights = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    embedding = embed(tiny_pipe, "the famous cat poster")
    latents = generation_latents(tiny_pipe.unet, num_samples=4)
    result = wen.adjust_embedding(tiny_pipe, embedding, latents, target_loss=0.0)  # the authors' lr, 10 passes
    assert len(result.losses) == 10 and result.losses[-1] < 0.9 * result.losses[0]
    assert result.unet_sample_forwards == 4 * 11
    assert torch.equal(result.embedding[:, 0], embedding[:, 0])  # BOS is not optimized
    assert not torch.equal(result.embedding[:, 1:], embedding[:, 1:])
    assert all(torch.equal(v, weights[k]) for k, v in tiny_pipe.unet.state_dict().items())
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())  # flags restored
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())


def test_wen_adjustment_stops_at_the_target_loss(tiny_pipe):
    embedding = embed(tiny_pipe, "a red house painting")
    latents = generation_latents(tiny_pipe.unet, num_samples=4)
    first = wen.adjust_embedding(tiny_pipe, embedding, latents, max_iterations=1, target_loss=0.0).losses[0]
    result = wen.adjust_embedding(tiny_pipe, embedding, latents, target_loss=first)
    assert result.losses == [first] and torch.equal(result.embedding, embedding.float())


def authors_adjustment(pipe, embedding, latents, target_step, steps, guidance_scale, lr, iterations):
    """Wen et al.'s ``aug_prompt`` (local_sd_pipeline.py) restated: the guided generation from
    the original embedding runs to the target step, where the embedding is optimized on one
    [uncond, cond] U-Net batch; BOS held as the suite holds it (their gradient is zeroed)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    n = len(latents)
    uncond, cond = embed(pipe, "").expand(n, -1, -1), embedding.expand(n, -1, -1)
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        if i == target_step:
            single = embedding.clone().detach().requires_grad_(True)
            optimizer = torch.optim.AdamW([single], lr=lr)
            losses = []
            for _ in range(iterations):
                prediction = unet(latent_model_input, t,
                                  encoder_hidden_states=torch.cat([uncond, single.repeat(n, 1, 1)])).sample
                noise_pred_uncond, noise_pred_text = prediction.chunk(2)
                loss = torch.norm(noise_pred_text - noise_pred_uncond, p=2).mean()
                losses.append(loss.item())
                (single.grad,) = torch.autograd.grad(loss, [single])
                single.grad[:, [0]] = single.grad[:, [0]] * 0
                optimizer.step()
                optimizer.zero_grad()
                with torch.no_grad():
                    single[:, :1] = embedding[:, :1]
            return single.detach(), losses
        with torch.no_grad():
            prediction = unet(latent_model_input, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            noise_pred_uncond, noise_pred_text = prediction.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample


@pytest.mark.parametrize("target_step", [0, 2])
def test_wen_adjustment_is_the_authors_at_the_first_and_a_later_step(tiny_pipe, target_step):
    embedding = embed(tiny_pipe, "the famous cat poster")
    latents = generation_latents(tiny_pipe.unet, num_samples=3)
    expected, losses = authors_adjustment(tiny_pipe, embedding, latents, target_step, 5, 7.5, 0.05, 4)
    result = wen.adjust_embedding(tiny_pipe, embedding, latents, timestep_index=target_step, steps=5,
                                  guidance_scale=7.5, max_iterations=4, target_loss=0.0)
    assert result.losses[:4] == pytest.approx(losses, rel=1e-5)
    torch.testing.assert_close(result.embedding, expected, rtol=1e-5, atol=1e-6)
    assert result.unet_sample_forwards == target_step * 2 * 3 + 3 * 5
    assert no_hooks(tiny_pipe.unet)


@torch.no_grad()
def test_wen_score_of_one_step_is_the_first_guided_noise_difference(tiny_pipe):
    embedding = embed(tiny_pipe, "the famous cat poster")
    latents = generation_latents(tiny_pipe.unet, num_samples=3)
    scores = wen.noise_magnitude_scores(tiny_pipe, embedding, latents, steps=5, score_steps=1)
    scheduler, unet = tiny_pipe.scheduler, tiny_pipe.unet
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[0]
    x = scheduler.scale_model_input(latents, t)
    difference = (unet(x, t, encoder_hidden_states=embedding.expand(3, -1, -1)).sample
                  - unet(x, t, encoder_hidden_states=embed(tiny_pipe, "").expand(3, -1, -1)).sample)
    torch.testing.assert_close(scores, difference.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-5)
    assert no_hooks(unet)
    longer = wen.noise_magnitude_scores(tiny_pipe, embedding, latents, steps=5, score_steps=5)
    assert longer.shape == (3,) and not torch.allclose(longer, scores)
    with pytest.raises(ValueError, match="between 1 and the 5 generation steps"):
        wen.noise_magnitude_scores(tiny_pipe, embedding, latents, steps=5, score_steps=6)


def reference_attention(attention, hidden, text, factor, length):
    """Ren et al.'s rule written out: logits q.k / sqrt(d), the BOS logit of the conditional
    half times ``factor``, keys from ``length`` on masked in both halves, softmax, @ v."""
    batch, heads = hidden.shape[0], attention.heads
    q, k, v = attention.to_q(hidden), attention.to_k(text), attention.to_v(text)
    split = lambda x: x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # [b, heads, tokens, d]
    q, k, v = split(q), split(k), split(v)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [b, heads, pixels, 77]
    logits[batch // 2:, ..., 0] *= factor
    logits[..., length:] = float("-inf")
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, heads * q.shape[-1])
    return attention.to_out[1](attention.to_out[0](out))


@torch.no_grad()
def test_attention_scaling_is_ren_rule_on_every_cross_attention(tiny_pipe):
    unet = tiny_pipe.unet
    layers = ren.cross_attention_layers(unet)
    assert len(layers) == 16 and all(name.endswith("attn2") for name in layers)  # down, mid and up blocks
    attention = next(iter(layers.values()))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 9, attention.to_q.in_features, generator=g)
    text = torch.randn(4, 77, attention.to_k.in_features, generator=g)
    with ren.scale_attention(unet, length=5, guided=True, factor=1.7):
        scaled = attention(hidden, encoder_hidden_states=text)
    torch.testing.assert_close(scaled, reference_attention(attention, hidden, text, 1.7, 5), rtol=1e-4, atol=1e-5)
    plain = attention(hidden, encoder_hidden_states=text)
    torch.testing.assert_close(plain, reference_attention(attention, hidden, text, 1.0, 77), rtol=1e-4, atol=1e-5)
    # factor 1 without the mask changes nothing: the hooks touch only the BOS logit and the mask
    with ren.scale_attention(unet, length=5, guided=True, factor=1.0, mask_padding=False):
        torch.testing.assert_close(attention(hidden, encoder_hidden_states=text), plain, rtol=0, atol=0)
    # nothing but the cross-attention calls and their key projections is hooked
    with ren.scale_attention(unet, length=5, guided=True):
        hooked = [name for name, m in unet.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert sorted(hooked) == sorted([*layers, *(f"{name}.to_k" for name in layers)])
    assert no_hooks(unet)


def test_attention_scaling_hooks_are_removed_after_an_exception(tiny_pipe):
    with pytest.raises(RuntimeError, match="boom"):
        with ren.scale_attention(tiny_pipe.unet, length=5, guided=True):
            assert not no_hooks(tiny_pipe.unet)
            raise RuntimeError("boom")
    assert no_hooks(tiny_pipe.unet)


def test_prompt_length_counts_bos_tokens_and_one_end_token(tiny_pipe):
    tokens = tiny_pipe.tokenizer("the red cat").input_ids
    assert ren.prompt_length(tiny_pipe.tokenizer, "the red cat") == len(tokens) == 5


def test_random_tokens_are_reproducible_and_keep_the_caption(tiny_pipe):
    caption = "the famous cat poster"
    changed, added = random_tokens.add_random_tokens(caption, tiny_pipe.tokenizer, 4, random_tokens.prompt_rng(0, 3))
    again = random_tokens.add_random_tokens(caption, tiny_pipe.tokenizer, 4, random_tokens.prompt_rng(0, 3))
    other = random_tokens.add_random_tokens(caption, tiny_pipe.tokenizer, 4, random_tokens.prompt_rng(0, 4))
    assert (changed, added) == again and other != again and len(added) == 4
    words = changed.split(" ")
    for word in added:  # taking the added words out again leaves the caption
        words.remove(word)
    assert " ".join(words) == caption
    special = set(tiny_pipe.tokenizer.all_special_ids)
    ids = random_tokens.candidate_ids(tiny_pipe.tokenizer)
    assert ids and not special & set(ids) and max(ids) < len(tiny_pipe.tokenizer)


def test_random_token_ids_follow_the_authors_range():
    class ClipSized:  # CLIP's tokenizer: 49,408 ids, start and end tokens last
        all_special_ids = [49406, 49407]

        def __len__(self):
            return 49408

    assert random_tokens.candidate_ids(ClipSized()) == list(range(49400))
