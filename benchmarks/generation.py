"""Images a second of script 4: the authors' -b (all --num_samples images of a prompt in one
pipeline call) against one image per call (this suite's old -b 1), side by side in one process.

    PYTHONPATH=. python -m benchmarks.generation                      # the test bed, CPU
    PYTHONPATH=. python -m benchmarks.generation -v v1-4 --device cuda --prompts 4 -b 1 4
"""

from __future__ import annotations

import argparse
import time

from utils import cli, defaults


def main(argv=None) -> dict:
    import testbed

    parser = cli.parser_for(__doc__)
    parser.add_argument("-v", "--version", default=testbed.MODEL_DIR, help="model (default: the test bed)")
    parser.add_argument("--device", default=None, help="torch device")
    parser.add_argument("--prompts", type=cli.positive_int, default=2, help="prompts of each mode")
    parser.add_argument("-n", "--num_samples", type=cli.positive_int, default=defaults.NUM_SAMPLES, help="images a prompt")
    parser.add_argument("--steps", type=cli.positive_int, default=defaults.GENERATION_STEPS, help="DDIM steps")
    parser.add_argument("-b", "--batch_sizes", type=cli.positive_int, nargs="+", default=[1],
                        help="authors' -b values measured (prompts a call)")
    args: argparse.Namespace = parser.parse_args(argv)

    import torch

    from utils.files import read_prompts
    from utils.generation import caption_condition, generate_batch, generation_latents
    from utils.models import load_pipeline, resolve_device

    pipe = load_pipeline(args.version, resolve_device(args.device))
    pipe.set_progress_bar_config(disable=True)
    captions = read_prompts(testbed.MEMORIZED_PROMPTS)["Caption"].tolist()[: args.prompts]
    latents = generation_latents(pipe.unet, num_samples=args.num_samples)  # [n, 4, h, w]
    conditions = [caption_condition(pipe, c) for c in captions]
    settings = dict(steps=args.steps, guidance_scale=defaults.GUIDANCE_SCALE)

    def synchronize():
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()

    def one_image_a_call():
        for condition in conditions:
            for j in range(len(latents)):
                generate_batch(pipe, [condition], latents[j:j + 1], **settings)

    def authors(b: int):
        for start in range(0, len(conditions), b):
            generate_batch(pipe, conditions[start:start + b], latents, **settings)

    modes = {"one image a call (old -b 1)": one_image_a_call}
    modes.update({f"authors' -b {b} ({b * args.num_samples} images a call)": (lambda b=b: authors(b))
                  for b in args.batch_sizes})
    generate_batch(pipe, conditions[:1], latents[:1], **dict(settings, steps=1))  # warm-up
    rates = {}
    for name, run in modes.items():
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        rates[name] = len(conditions) * len(latents) / (time.perf_counter() - start)
    base = rates["one image a call (old -b 1)"]
    print(f"{args.version} on {pipe.device}, {len(conditions)} prompts x {len(latents)} images, {args.steps} steps")
    for name, rate in rates.items():
        print(f"  {name:<40} {rate:8.2f} images/s  ({rate / base:.2f}x)")
    return rates


if __name__ == "__main__":
    main()
