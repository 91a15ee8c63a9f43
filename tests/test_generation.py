"""Generation under a prompt condition on the tiny pipeline: a prompt's own initial latents and
a per-step guidance schedule, the two things a mitigation may change besides the embedding and
the hooks."""

import numpy as np
import torch

from utils.generation import PromptCondition, caption_condition, generate_batch, generation_latents


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_a_constant_schedule_is_the_pipelines_guidance(tiny_pipe):
    latents = generation_latents(tiny_pipe.unet, 0, 2)
    plain = caption_condition(tiny_pipe, "the famous cat poster")
    scheduled = PromptCondition(plain.embedding, guidance=lambda _step: 7.0)
    pipeline, own = (generate_batch(tiny_pipe, [c], latents, steps=3, guidance_scale=7.0)[0] for c in (plain, scheduled))
    assert np.abs(pixels(pipeline) - pixels(own)).max() <= 1  # the same computation; JPEG-free PIL images
    off = PromptCondition(plain.embedding, guidance=lambda step: 0.0 if step < 2 else 7.0)
    assert np.abs(pixels(generate_batch(tiny_pipe, [off], latents, steps=3)[0]) - pixels(own)).max() > 1


def test_a_prompt_with_its_own_latents_starts_from_them(tiny_pipe):
    latents = generation_latents(tiny_pipe.unet, 0, 2)
    own = generation_latents(tiny_pipe.unet, 5, 2)
    plain = caption_condition(tiny_pipe, "a red house painting")
    moved = PromptCondition(plain.embedding, latents=own)
    shared = generate_batch(tiny_pipe, [plain, moved], latents, steps=2)
    alone = generate_batch(tiny_pipe, [caption_condition(tiny_pipe, "a red house painting")], own, steps=2)[0]
    assert np.abs(pixels(shared[1]) - pixels(alone)).max() <= 1
    assert np.abs(pixels(shared[0]) - pixels(shared[1])).max() > 1


def test_prompts_with_other_schedules_do_not_share_a_call(tiny_pipe):
    from utils.generation import _groups

    embedding = torch.zeros(1, 77, 32)
    a, b = (PromptCondition(embedding, guidance=lambda step: 1.0), PromptCondition(embedding, guidance=lambda s: 2.0))
    assert _groups([a, a, b, PromptCondition(embedding)]) == [[0, 1], [2], [3]]


def test_records_count_every_unet_sample_forward_and_backward(tiny_pipe, tmp_path):
    import json

    from utils.generation import generate_images
    from utils.methods.wen.noise_magnitude import adjust_embedding

    def adjusted(_index, caption, latents):  # a mitigation that backpropagates: Wen's, 2 passes on 2 latents
        condition = caption_condition(tiny_pipe, caption)
        condition.embedding = adjust_embedding(tiny_pipe, condition.embedding, latents[:2], steps=3, max_iterations=2,
                                               target_loss=0.0).embedding
        return condition

    generate_images(tiny_pipe, {0: "a red cat", 1: "a blue dog"}, adjusted, str(tmp_path), num_samples=3, steps=3,
                    batch_size=2)
    records = [json.loads(line) for line in open(tmp_path / "prompt_records.jsonl")]
    # per prompt: the adjustment's 2 latents x (2 passes + 1 final check), then 3 steps of 3 images, both branches
    assert [r["unet_sample_forwards"] for r in records] == [2 * 3 + 3 * 3 * 2] * 2
    assert [r["unet_sample_backwards"] for r in records] == [2 * 2] * 2 and records[0]["images"] == 3


def test_each_process_of_a_launch_writes_its_own_records(tiny_pipe, tmp_path, monkeypatch):
    """Process RANK > 0 appends to prompt_records.{RANK}.jsonl, not to the file rank 0 writes,
    and a prompt recorded by any process is done for every one."""
    import os

    from utils.generation import RECORDS_NAME, generate_images, read_records

    plain = lambda _index, caption, _latents: caption_condition(tiny_pipe, caption)
    out = str(tmp_path)
    for rank, captions in ((0, {0: "a red cat"}), (1, {1: "a blue dog"}), (12, {2: "a green hat"})):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "13")
        generate_images(tiny_pipe, captions, plain, out, num_samples=1, steps=2)
    names = sorted(name for name in os.listdir(out) if name.endswith(".jsonl"))
    assert names == ["prompt_records.1.jsonl", "prompt_records.12.jsonl", RECORDS_NAME]
    captions = {p: r["caption"] for p, r in read_records(out).items()}
    assert captions == {0: "a red cat", 1: "a blue dog", 2: "a green hat"}
    monkeypatch.setenv("RANK", "0")
    assert generate_images(tiny_pipe, {0: "a red cat", 1: "a blue dog", 2: "a green hat"}, plain, out,
                           num_samples=1, steps=2) == 0
