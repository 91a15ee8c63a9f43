"""Script 4: generate images with neurons deactivated (SPEC §5).

Without a blocking flag nothing is deactivated. Images are named
img_{prompt:04d}_{sample:02d}.jpg (prompt = row of the results or prompt file) and a
config.json of the run is written beside them. Prompts whose images all exist are skipped,
so a killed run resumes by running the same command again.
"""

import json
import logging
import os
import random

from utils import cli, selection
from utils.distributed import Shard
from utils.files import read_prompts, read_results
from utils.generation import GENERATION_SEED, GENERATION_STEPS, GUIDANCE_SCALE, NUM_SAMPLES, generate_images
from utils.layers import count_neurons, layer_widths, value_layers
from utils.models import load_pipeline, resolve_device

logger = logging.getLogger("4_generate_images")


def add_mode_args(parser) -> None:
    group = parser.add_argument_group("neurons to deactivate (at most one)").add_mutually_exclusive_group()
    group.add_argument("--initial_neurons", action="store_true", help="each prompt's initial selection")
    group.add_argument("--refined_neurons", action="store_true", help="each prompt's refined neurons")
    group.add_argument("--block_top_k_neurons_per_layer", type=int, metavar="K",
                       help="the K most frequent refined neurons of each layer, for every prompt")
    group.add_argument("--block_top_k_neurons", type=int, metavar="K",
                       help="the K most frequent refined neurons over all layers, for every prompt")
    group.add_argument("--block_top_k_neuron_subgroups", type=int, metavar="K",
                       help="union of the K most frequent refined neuron sets, for every prompt")
    group.add_argument("--block_random_neurons", action="store_true",
                       help="per prompt, as many random neurons per layer as its refined set has")


def neuron_sets_for(args, results, widths) -> list:
    """The neuron set of each row of ``results`` under the chosen mode (None: nothing)."""
    refined = list(results["Refined Neurons"]) if results is not None else []
    if args.initial_neurons:
        return list(results["Initial Neurons"])
    if args.refined_neurons:
        return refined
    if args.block_random_neurons:
        rng = random.Random(selection.RANDOM_SEED)
        return [selection.random_like(neurons, widths, rng) for neurons in refined]
    for flag, pick in (("block_top_k_neurons_per_layer", selection.top_k_per_layer),
                       ("block_top_k_neurons", selection.top_k_overall),
                       ("block_top_k_neuron_subgroups", selection.top_k_sets)):
        if getattr(args, flag) is not None:
            return [pick(refined, getattr(args, flag))] * len(results)
    return [None] * len(results)


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("-f", "--result_file", default="results/memorization_statistics_v1_4.csv",
                        help="results of script 3 (neurons per prompt)")
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="the prompt file script 3 ran on; read for --memorization_type")
    parser.add_argument("--unmemorized_prompts", default=None,
                        help="generate for this prompt file instead of the results' prompts (global modes only)")
    parser.add_argument("--memorization_type", choices=("VM", "TM"), default=None,
                        help="only prompts of this type (column 'type' of --dataset)")
    parser.add_argument("-o", "--output", default="generated_images", help="image folder")
    parser.add_argument("-s", "--seed", type=int, default=GENERATION_SEED, help="seed of each prompt's latents")
    parser.add_argument("-n", "--num_samples", type=int, default=NUM_SAMPLES, help="images per prompt")
    parser.add_argument("--steps", type=int, default=GENERATION_STEPS, help="DDIM steps")
    parser.add_argument("-g", "--guidance_scale", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance")
    parser.add_argument("-b", "--batch_size", type=int, default=1, help="images per pipeline call")
    parser.add_argument("-sf", "--scaling_factor", type=float, default=0.0, help="factor for deactivated neurons")
    add_mode_args(parser)
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False)
    args = cli.parse(parser, argv)

    pipe = load_pipeline(args.version, resolve_device(args.device))
    widths = layer_widths(value_layers(pipe.unet))
    needs_results = any(getattr(args, f) not in (None, False) for f in (
        "initial_neurons", "refined_neurons", "block_random_neurons", "block_top_k_neurons_per_layer",
        "block_top_k_neurons", "block_top_k_neuron_subgroups"))
    results = read_results(args.result_file, widths) if needs_results or not args.unmemorized_prompts else None
    neuron_sets = neuron_sets_for(args, results, widths) if results is not None else []
    if args.unmemorized_prompts:
        if args.initial_neurons or args.refined_neurons or args.block_random_neurons:
            parser.error("--unmemorized_prompts works with no blocking or the global top-k modes only")
        prompts = read_prompts(args.unmemorized_prompts)["Caption"].tolist()
        neuron_sets = [neuron_sets[0] if neuron_sets else None] * len(prompts)
    else:
        prompts = results["Caption"].tolist()
    indices = list(range(len(prompts)))
    if args.memorization_type:
        types = read_prompts(args.dataset)
        if "type" not in types:
            raise ValueError(f"prompt file {args.dataset} has no column 'type' for --memorization_type")
        indices = [i for i in indices if types["type"][i] == args.memorization_type]
    indices = indices[: args.limit]

    shard = Shard.from_env()
    os.makedirs(args.output, exist_ok=True)
    if shard.rank == 0:
        with open(os.path.join(args.output, "config.json"), "w") as f:
            json.dump(dict(vars(args), prompts={i: prompts[i] for i in indices},
                           neurons={i: neuron_sets[i] for i in indices}), f, indent=1)
    indices = indices[shard.rank::shard.world_size]  # this process's prompts; image names are global
    logger.info("%d prompts, %d neurons deactivated in all", len(indices),
                sum(count_neurons(neuron_sets[i]) for i in indices if neuron_sets[i]))
    generate_images(pipe, [prompts[i] for i in indices], [neuron_sets[i] for i in indices], args.output, indices,
                    seed=args.seed, num_samples=args.num_samples, steps=args.steps,
                    guidance_scale=args.guidance_scale, scaling_factor=args.scaling_factor,
                    batch_size=args.batch_size)


if __name__ == "__main__":
    cli.run(main)
