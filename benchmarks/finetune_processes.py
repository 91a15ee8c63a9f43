"""Seconds per update of script 9 on the built-in test bed, one process of 2 threads against two
processes of one thread each under torchrun (gloo, ``--schedule single``: the same updates), and
the largest difference between the two fine-tuned U-Nets.

    PYTHONPATH=. python -m benchmarks.finetune_processes                 # 2 images, 1 epoch
    PYTHONPATH=. python -m benchmarks.finetune_processes --images 4 --attack_steps 20 --utility_batch 64
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from utils import cli
from utils.methods import dori

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = 2  # cores of the machine the figure of BENCHMARKS.md was measured on


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--images", type=cli.positive_int, default=2, help="memorized images (--limit)")
    parser.add_argument("--epochs", type=cli.positive_int, default=1, help="script 9's --epochs")
    parser.add_argument("--attack_steps", type=cli.positive_int, default=5, help="script 9's --attack_steps")
    parser.add_argument("--attack_batch", type=cli.positive_int, default=4, help="script 9's --attack_batch")
    parser.add_argument("--utility_batch", type=cli.positive_int, default=8, help="script 9's --utility_batch")
    parser.add_argument("--learning_rate", type=cli.positive_float, default=dori.FINETUNE_LEARNING_RATE,
                        help="script 9's --learning_rate")
    parser.add_argument("--surrogate_steps", type=cli.positive_int, default=10, help="script 9's --surrogate_steps")
    parser.add_argument("--output", default=None, help="folder of the inputs and both models (default: a temporary)")
    args = parser.parse_args(argv)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        return measure(args, args.output)
    with tempfile.TemporaryDirectory() as folder:
        return measure(args, folder)


def measure(args, folder: str) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    import testbed
    from testbed.synthetic_data import write_ordinary_pairs
    from testbed.train_testbed import SEED
    from utils.files import read_prompts
    from utils.layers import value_layers

    # no neuron switched off: the surrogates are the plain model's images (the cost is the same)
    layers = len(value_layers(UNet2DConditionModel.from_pretrained(testbed.MODEL_DIR, subfolder="unet")))
    results = os.path.join(folder, "results.csv")
    with open(results, "w") as f:
        f.write(";Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM\n")
        none = str([[]] * layers)
        for row, caption in read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"].items():
            f.write(f"{row};{caption};u;{none};0;{none};0\n")
    flags = ["-v", testbed.MODEL_DIR, "-d", testbed.MEMORIZED_PROMPTS, "--originals", testbed.ORIGINALS_DIR,
             "-f", results, "--utility_data", write_ordinary_pairs(os.path.join(folder, "pairs"), 16, SEED, SEED + 3),
             "--limit", str(args.images), "--epochs", str(args.epochs), "--attack_steps", str(args.attack_steps),
             "--attack_batch", str(args.attack_batch), "--utility_batch", str(args.utility_batch),
             "--learning_rate", str(args.learning_rate),
             "--surrogate_steps", str(args.surrogate_steps), "--schedule", "single", "--device", "cpu", "--overwrite"]
    script = os.path.join(ROOT, "9_adversarial_finetuning.py")
    runs = {f"1 process x {THREADS} threads": (THREADS, [sys.executable, script]),
            "2 processes x 1 thread (torchrun, gloo)": (1, [sys.executable, "-m", "torch.distributed.run",
                                                             "--standalone", "--nproc_per_node", "2", script])}
    figures, models = {}, {}
    for name, (threads, command) in runs.items():
        models[name] = os.path.join(folder, f"tuned{len(models)}")
        start = time.perf_counter()
        subprocess.run([*command, *flags, "-o", models[name]], cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads)))
        wall = time.perf_counter() - start
        history = json.load(open(os.path.join(models[name], "finetune.json")))["history"]
        figures[name] = dict(updates=len(history), command_seconds=round(wall, 1),
                             seconds_per_update=round(statistics.median(h["seconds"] for h in history), 3))
    one, two = (UNet2DConditionModel.from_pretrained(models[name], subfolder="unet").state_dict() for name in runs)
    differences = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    difference = differences.max().item()
    beyond = int((differences > args.learning_rate / 100).sum())  # AdamW turned a rounding difference into a step
    print(f"script 9 on the test bed, {args.images} images x {args.epochs} epochs, {args.attack_steps} attack steps of "
          f"{args.attack_batch} samples, {args.utility_batch} utility pairs, --schedule single")
    for name, figure in figures.items():
        print(f"  {name:<42} {figure['seconds_per_update']:8.2f} s per update (median of {figure['updates']}), "
              f"command {figure['command_seconds']:.1f} s")
    print(f"  largest weight difference {difference:.3g} at learning rate {args.learning_rate:g}; {beyond} of "
          f"{len(differences)} weights differ by more than 1/100 of it")
    return dict(figures, max_weight_difference=difference, weights_beyond_a_hundredth=beyond)


if __name__ == "__main__":
    main()
