"""Stable Diffusion v1.4 at its real size, without its weights (testbed/rehearsal.py):
U-Net speed, each script's peak memory, script 3's projected time per prompt.

* seconds per U-Net forward of 10 latents (64x64, SD v1.4's U-Net), fp32 and fp16;
* the peak resident memory of the reduced real-shape pass's commands (scripts 1-5, 7-9 and
  the metric commands; script 9 with and without --gradient_checkpointing), each run as a
  child process and measured with os.wait4's ru_maxrss (host memory; GPU memory is not measured);
* script 3's projected seconds per prompt for the paper's median candidate counts, from
  the U-Net time.

    nice python -m benchmarks.real_size --rehearsal DIR            # the CPU figures
    python -m benchmarks.real_size --rehearsal DIR --device cuda   # the same on a GPU

The reduced pass (``reduced_pass``) is also what tests/test_real_shapes.py runs in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pandas as pd

from utils.defaults import SSCD_COPY_THRESHOLD

REDUCED_PROMPTS = 2  # the authors' first memorized prompts: one VM, one TM
IMAGE_SIZE = 512  # SD v1.4's resolution: the originals and utility images of the pass
FORWARD_LATENTS = 10  # SPEC §3: a scored set is one U-Net call over 10 latents
# Script 5 removes one neuron of each value layer (script 3's smoke run refines nothing away).
PRUNED_NEURONS = [[layer] for layer in range(7)]
# Script 4's modes (one image, one DDIM step each); guidance 0 except where the mode needs
# both halves of classifier-free guidance.
SCRIPT4_MODES = {
    "plain": [],
    "initial": ["--initial_neurons"],
    "refined": ["--refined_neurons"],
    "top_k_per_layer": ["--block_top_k_neurons_per_layer", "1"],
    "top_k": ["--block_top_k_neurons", "1"],
    "top_k_subgroups": ["--block_top_k_neuron_subgroups", "1"],
    "random": ["--block_random_neurons"],
    "wen": ["--wen", "--wen_samples", "1", "--wen_max_iterations", "1"],
    "ren": ["--ren", "-g", "7"],
    "random_tokens": ["--random_tokens", "1"],
}


def prepare_inputs(upstream: str, work: str) -> dict[str, str]:
    """The pass's inputs under ``work``: the authors' first memorized prompts, one noise
    'original' image per prompt and two utility pairs (captions of the authors' unmemorized
    prompts, noise images), all at 512x512."""
    import numpy as np
    from PIL import Image

    os.makedirs(os.path.join(work, "originals"), exist_ok=True)
    os.makedirs(os.path.join(work, "utility"), exist_ok=True)
    memorized = pd.read_csv(os.path.join(upstream, "memorized_laion_prompts.csv"), sep=";", index_col=0)
    prompts = os.path.join(work, "prompts.csv")
    memorized.head(REDUCED_PROMPTS)[["Caption", "URL", "type"]].to_csv(prompts, sep=";")
    rng = np.random.default_rng(0)
    noise = lambda: Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    for row in range(REDUCED_PROMPTS):
        noise().save(os.path.join(work, "originals", f"{row:04d}.png"))
    unmemorized = pd.read_csv(os.path.join(upstream, "unmemorized_laion_prompts.csv"), sep=";", index_col=0)
    captions = unmemorized["Caption"].head(2).tolist()
    for i in range(len(captions)):
        noise().save(os.path.join(work, "utility", f"{i}.png"))
    utility = os.path.join(work, "utility", "pairs.csv")
    pd.DataFrame(dict(Caption=captions, Image=[f"{i}.png" for i in range(len(captions))])).to_csv(utility, sep=";")
    return dict(prompts=prompts, originals=os.path.join(work, "originals"), utility=utility,
                statistics=os.path.join(upstream, "statistics_additional_laion_prompts_v1_4.pt"))


def reduced_pass(model: str, inputs: dict[str, str], sscd: str, clip: str, work: str,
                 device: list[str] = ()) -> list[tuple[str, str, list[str]]]:
    """(name, module, argv) of every command of the reduced real-shape pass, in order.

    model: a rehearsal SD v1.4 folder; inputs: ``prepare_inputs``'s; sscd, clip: the
    stand-ins; device: flags added to each model command (e.g. ``--device cuda``).
    """
    path = lambda *parts: os.path.join(work, *parts)
    results = path("results.csv")
    model_flags = ["-v", model, *device]
    generation = ["-f", results, "-d", inputs["prompts"], "--limit", "1", "-n", "1", "--steps", "1", "-g", "0"]
    commands = [
        ("script 1", "1_compute_activations_statistics",
         [*model_flags, "--prompts", inputs["prompts"], "--output", path("statistics.pt")]),
        ("script 2", "2_compute_pairwise_ssim",
         [*model_flags, "--prompts", inputs["prompts"], "--output", path("scores.csv"), "--samples_per_prompt", "2"]),
        ("script 3", "3_detect_memorized_neurons",
         [*model_flags, "-d", inputs["prompts"], "-o", results, "--statistics", inputs["statistics"], "--limit", "1",
          "--smoke"]),
    ]
    commands += [(f"script 4 {mode}", "4_generate_images", [*model_flags, *generation, "-o", path("images", mode), *flags])
                 for mode, flags in SCRIPT4_MODES.items()]
    commands += [
        ("script 5", "5_export_pruned_model", [*model_flags, "--neurons", json.dumps(PRUNED_NEURONS), "-o", path("pruned"),
                                               "--dtype", "float16"]),
        ("script 5 reloaded", "4_generate_images", ["-v", path("pruned"), *device, *generation, "-o", path("images", "pruned")]),
        ("script 6", "6_reproduce_table1",
         [*model_flags, "-d", inputs["prompts"], "-o", path("table1"), "--statistics", inputs["statistics"], "--smoke",
          "--limit", "1", "--steps", "1", "-n", "1", "-g", "0", "--rows", "all neurons active,NeMo",
          "--originals", inputs["originals"], "--sscd-model", sscd, "--clip-model", clip,
          "--copy_threshold", str(SSCD_COPY_THRESHOLD)]),  # the stand-in SSCD has no threshold of its own
        ("script 7", "7_prune_memorized_weights",
         [*model_flags, "-d", inputs["prompts"], "-o", path("wanda"), "--subset_size", "1", "--calls", "1",
          "--steps", "1", "--guidance_scale", "0"]),
        ("script 8", "8_attack_mitigation",
         [*model_flags, "-d", inputs["prompts"], "--originals", inputs["originals"], "-o", path("attack"),
          "--neurons_from", results, "--limit", "1", "--attack_steps", "1", "--attack_batch", "1", "-n", "1",
          "--steps", "1", "-g", "0", "--sscd-model", sscd]),
        ("script 9", "9_adversarial_finetuning",
         [*model_flags, "-d", inputs["prompts"], "--originals", inputs["originals"], "-f", results,
          "--utility_data", inputs["utility"], "-o", path("finetuned"), "--limit", "1", "--epochs", "1",
          "--attack_steps", "1", "--attack_batch", "1", "--utility_batch", "1", "--surrogate_steps", "1",
          "--gradient_checkpointing"]),  # 1 GiB less at its peak, which is CI's largest (BENCHMARKS.md)
        ("SSCD_Orig", "metrics.sscd_orig", ["-i", path("images", "plain"), "-r", inputs["originals"],
                                            "-p", inputs["prompts"], "--sscd-model", sscd, "-o", path("sscd_orig.json")]),
        ("SSCD_Gen", "metrics.sscd_gen", ["-i", path("images", "refined"), "-r", path("images", "plain"),
                                          "-p", inputs["prompts"], "--sscd-model", sscd, "-o", path("sscd_gen.json")]),
        ("A_CLIP", "metrics.alignment", ["-i", path("images", "plain"), "-p", inputs["prompts"], "--clip-model", clip,
                                         "-o", path("alignment.json")]),
    ]
    return commands


def peak_memory(module: str, argv: list[str]) -> tuple[float, float, int]:
    """(seconds, peak resident GiB, exit status) of ``python -m module argv`` as a child process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.stderr.write(child.stderr.read().decode()[-2000:])
    return time.perf_counter() - start, usage.ru_maxrss / 2 ** 20, child.returncode  # ru_maxrss: KiB on Linux


def unet_seconds(device: str, dtype_name: str, repeats: int, latents: int = FORWARD_LATENTS) -> float:
    """Seconds per U-Net forward of ``latents`` 64x64 latents, SD v1.4's U-Net."""
    import torch
    from diffusers import UNet2DConditionModel

    from testbed.rehearsal import SD14_UNET_CONFIG, seeded_weights

    dtype = getattr(torch, dtype_name)
    unet = seeded_weights(lambda: UNet2DConditionModel(**SD14_UNET_CONFIG), 0, dtype).to(device)
    text = torch.randn(latents, 77, 768, device=device, dtype=dtype)
    latents = torch.randn(latents, 4, 64, 64, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        unet(latents[:1], 961, encoder_hidden_states=text[:1])  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            unet(latents, 961, encoder_hidden_states=text)
        sync()
    return (time.perf_counter() - start) / repeats


def projected_prompt_seconds(seconds_per_set: float) -> dict[str, float]:
    """Script 3's seconds per prompt for the paper's median initial neuron counts: the
    unblocked call, about 4 selection steps, 7 layer re-activations and one set per initial
    neuron, each one U-Net call over 10 latents (sequential walk)."""
    from benchmarks.localization import PAPER_MEDIAN_INITIAL_NEURONS

    return {kind: (1 + 4 + 7 + initial) * seconds_per_set for kind, initial in PAPER_MEDIAN_INITIAL_NEURONS.items()}


def command_figures(args) -> dict:
    """{command name: seconds, peak GiB, exit status} of the reduced pass on SD v1.4's rehearsal."""
    from testbed import rehearsal

    paths = rehearsal.write(["sd14", "sscd", "clip-b32"], args.rehearsal)
    inputs = prepare_inputs(args.upstream, args.work)
    commands = reduced_pass(paths["sd14"], inputs, paths["sscd"], paths["clip-b32"], args.work, ["--device", args.device])
    script9 = [a for a in next(argv for name, _, argv in commands if name == "script 9") if a != "--gradient_checkpointing"]
    output = script9.index("-o") + 1
    commands.append(("script 9 without checkpointing", "9_adversarial_finetuning",
                     [*script9[:output], os.path.join(args.work, "finetuned_plain"), *script9[output + 1:]]))
    skip = set(filter(None, args.skip.split(",")))
    figures = {}
    for name, module, command in commands:
        if name in skip:
            continue
        seconds, gib, status = peak_memory(module, command)
        figures[name] = dict(seconds=round(seconds, 1), peak_gib=round(gib, 2), status=status)
        print(f"{name:<24} {seconds:8.1f} s  peak {gib:6.2f} GiB  exit {status}", flush=True)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearsal", required=True, help="folder of the rehearsal checkpoints (written if absent)")
    parser.add_argument("--upstream", default=os.path.join("..", "shared", "data", "upstream"),
                        help="the authors' prompt files and statistics")
    parser.add_argument("--work", default="/tmp/real_size", help="folder for the pass's inputs and outputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,float16", help="dtypes of the U-Net timing")
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards per dtype")
    parser.add_argument("--latents", type=int, default=FORWARD_LATENTS,
                        help=f"latents per timed forward (default {FORWARD_LATENTS}, a scored set; fewer for fp16 on "
                             "the CPU, which is slow; the projection scales the time to a set)")
    parser.add_argument("--skip", default="", help="comma-separated command names to leave out of the memory pass")
    parser.add_argument("--forward_only", action="store_true", help="only the U-Net timing, no command")
    parser.add_argument("-o", "--output", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    figures = dict(device=args.device, forward_seconds={}, projected_prompt_seconds={}, commands={})
    if not args.forward_only:
        figures["commands"] = command_figures(args)
    for dtype in args.dtypes.split(","):
        seconds = unet_seconds(args.device, dtype, args.repeats, args.latents) * FORWARD_LATENTS / args.latents
        figures["forward_seconds"][dtype] = round(seconds, 2)
        figures["projected_prompt_seconds"][dtype] = {k: round(v, 1) for k, v in projected_prompt_seconds(seconds).items()}
        print(f"U-Net forward of {FORWARD_LATENTS} latents, {dtype}: {seconds:.2f} s"
              + (f" ({args.latents} timed, scaled)" if args.latents != FORWARD_LATENTS else "") + "; script 3 per prompt, "
              + ", ".join(f"{k} {v:.0f} s" for k, v in figures["projected_prompt_seconds"][dtype].items()), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main()
