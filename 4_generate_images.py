"""Script 4: generate images under a mitigation (SPEC §5 and the baselines of Table 1).

Without a mode flag nothing is changed. Neuron modes read script 3's results; the modes
without neurons (none, --wen, --ren, --random_tokens N) need only a prompt file (--dataset or
--prompts). -b prompts share a pipeline call, each with all its --num_samples images (the
authors' meaning). Images are named img_{prompt:04d}_{sample:02d}.jpg (prompt = row of the
results or prompt file), each saved atomically; settings.json (what made the folder),
config.json of the run and prompt_records.jsonl (per prompt: caption used, added tokens, cost)
are written beside them. A prompt is done once its record follows its images, so a killed run
continues when the same command is run again; other settings in the same folder are refused.
"""

import logging
import os
import random
import sys

from utils import cli, defaults

logger = logging.getLogger("4_generate_images")
NEURON_MODES = ("initial_neurons", "refined_neurons", "block_random_neurons", "block_top_k_neurons_per_layer",
                "block_top_k_neurons", "block_top_k_neuron_subgroups")
PER_PROMPT_NEURON_MODES = ("initial_neurons", "refined_neurons", "block_random_neurons")


def add_mode_args(parser) -> None:
    group = parser.add_argument_group("mitigation (at most one)").add_mutually_exclusive_group()
    group.add_argument("--initial_neurons", action="store_true", help="authors': each prompt's initial selection")
    group.add_argument("--refined_neurons", action="store_true", help="authors': each prompt's refined neurons (NeMo)")
    group.add_argument("--block_top_k_neurons_per_layer", type=cli.positive_int, metavar="K",
                       help="authors': the K most frequent refined neurons of each layer, for every prompt")
    group.add_argument("--block_top_k_neurons", type=cli.positive_int, metavar="K",
                       help="authors': the K most frequent refined neurons over all layers, for every prompt")
    group.add_argument("--block_top_k_neuron_subgroups", type=cli.positive_int, metavar="K",
                       help="authors': union of the K most frequent refined neuron sets, for every prompt")
    group.add_argument("--block_random_neurons", action="store_true",
                       help="ours (the authors' flag of this name takes a count): per prompt, as many random neurons per layer as its refined set has")
    group.add_argument("--wen", action="store_true",
                       help="ours: prompt embedding adjustment (Wen et al., ICLR 2024); settings below")
    group.add_argument("--ren", action="store_true", help="ours: attention scaling (Ren et al., ECCV 2024); settings below")
    group.add_argument("--random_tokens", type=cli.positive_int, metavar="N",
                       help="ours: N random vocabulary tokens added to each caption (Somepalli et al., NeurIPS 2023; "
                            f"Table 1: {', '.join(map(str, defaults.RANDOM_TOKEN_COUNTS))})")

    source = "YuxinWenRick/diffusion_memorization inference_mem.py"
    w = parser.add_argument_group(f"--wen settings (defaults: {source} and its README command)")
    w.add_argument("--wen_learning_rate", type=cli.positive_float, default=defaults.WEN_LEARNING_RATE,
                   help="AdamW learning rate (--optim_lr)")
    w.add_argument("--wen_max_iterations", type=cli.positive_int, default=defaults.WEN_MAX_ITERATIONS,
                   help="U-Net passes of the optimization at most (--optim_iters)")
    w.add_argument("--wen_target_loss", type=cli.non_negative_float, default=defaults.WEN_TARGET_LOSS,
                   help="stop once || eps(e) - eps(empty) || over the latents is at or below this (README's "
                        "--optim_target_loss 3, for 4 SD latents of 4x64x64)")
    w.add_argument("--wen_timestep_index", type=cli.non_negative_int, default=defaults.WEN_TARGET_STEP,
                   help="schedule index of the loss's timestep (--optim_target_steps); past 0 the latents are first "
                        "denoised to it with the caption and -g, as their aug_prompt")
    w.add_argument("--wen_samples", type=cli.positive_int, default=defaults.WEN_OPTIMIZATION_SAMPLES,
                   help="the prompt's first N generation latents the loss is taken over (--num_images_per_prompt)")
    r = parser.add_argument_group("--ren settings (defaults: renjie3/MemAttn local_cmd_inference_time_mitigation.sh)")
    r.add_argument("--ren_factor", type=float, default=defaults.REN_BOS_LOGIT_FACTOR,
                   help="factor of the BOS token's attention logit, conditional branch (--c1)")
    r.add_argument("--ren_no_mask", action="store_true",
                   help="do not mask the keys after the first end token (their command masks: --cross_attn_mask)")
    t = parser.add_argument_group("--random_tokens settings")
    t.add_argument("--random_token_seed", type=int, default=defaults.RANDOM_TOKEN_SEED,
                   help="seed of the tokens and positions (each prompt draws with (seed, prompt index))")


def neuron_sets_for(args, results, widths, rows: list[int]) -> list:
    """The neuron set of each row of ``results`` under the chosen neuron mode; the global modes
    count over ``rows`` (the prompts of --memorization_type, as the authors filter before counting)."""
    from utils.nemo import selection

    refined = list(results["Refined Neurons"])
    if args.initial_neurons:
        return list(results["Initial Neurons"])
    if args.refined_neurons:
        return refined
    if args.block_random_neurons:
        rng = random.Random(defaults.RANDOM_NEURON_SEED)
        return [selection.random_like(neurons, widths, rng) for neurons in refined]
    for flag, pick in (("block_top_k_neurons_per_layer", selection.top_k_per_layer),
                       ("block_top_k_neurons", selection.top_k_overall),
                       ("block_top_k_neuron_subgroups", selection.top_k_sets)):
        if getattr(args, flag) is not None:
            return [pick([refined[i] for i in rows], getattr(args, flag))] * len(results)


def preparation(args, pipe, neuron_sets: dict):
    """The ``Prepare`` of the chosen mode."""
    from utils import mitigation

    if args.wen:
        settings = mitigation.WenSettings(args.wen_learning_rate, args.wen_max_iterations, args.wen_target_loss,
                                          args.wen_timestep_index, args.wen_samples)
        return mitigation.with_adjusted_embedding(pipe, settings, args.steps, args.guidance_scale)
    if args.ren:
        return mitigation.with_attention_scaling(pipe, args.ren_factor, not args.ren_no_mask, args.guidance_scale)
    if args.random_tokens is not None:
        return mitigation.with_random_tokens(pipe, args.random_tokens, args.random_token_seed)
    return mitigation.with_neurons(pipe, neuron_sets, args.scaling_factor)


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("-f", "--result_file", default="results/memorization_statistics_v1_4.csv",
                        help="authors': results of script 3 (neurons and captions per prompt); read by the neuron "
                             "modes only")
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="ours: the prompt file script 3 ran on; the prompts of the modes without neurons, and "
                             "the types of --memorization_type")
    parser.add_argument("--prompts", "--unmemorized_prompts", dest="prompts", default=None,
                        help="authors' --unmemorized_prompts: generate for this prompt file instead (no neuron mode, "
                             "or a global top-k one)")
    parser.add_argument("--memorization_type", choices=("VM", "TM"), default=None,
                        help="authors': only prompts of this type (column 'type' of --prompts if given, else of "
                             "--dataset); the global top-k modes count their neurons only")
    parser.add_argument("-o", "--output", default="generated_images",
                        help="authors': image folder (its settings.json says what made it; other settings are refused)")
    parser.add_argument("-s", "--seed", type=int, default=defaults.GENERATION_SEED,
                        help="authors': seed of each prompt's latents")
    parser.add_argument("-n", "--num_samples", type=cli.positive_int, default=defaults.NUM_SAMPLES,
                        help="authors': images per prompt")
    parser.add_argument("--steps", type=cli.positive_int, default=defaults.GENERATION_STEPS, help="authors': DDIM steps")
    parser.add_argument("-g", "--guidance_scale", type=cli.non_negative_float, default=defaults.GUIDANCE_SCALE,
                        help="authors': classifier-free guidance")
    parser.add_argument("-b", "--batch_size", type=cli.positive_int, default=defaults.PROMPTS_PER_BATCH,
                        help="authors': prompts per batch, all --num_samples images of each in one pipeline call "
                             "(prompts whose mitigation hooks differ get a call each)")
    parser.add_argument("-sf", "--scaling_factor", type=float, default=defaults.SCALING_FACTOR,
                        help="authors': factor for deactivated neurons")
    add_mode_args(parser)
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False)
    args = cli.parse(parser, argv)
    neuron_mode = any(getattr(args, f) not in (None, False) for f in NEURON_MODES)
    if args.prompts and any(getattr(args, f) for f in PER_PROMPT_NEURON_MODES):
        parser.error("--prompts works with the baselines, no mitigation or the global top-k modes only")

    from utils.distributed import Shard
    from utils.files import read_prompts, read_results, rows_of_type
    from utils.generation import CONFIG_NAME, generate_images
    from utils.layers import count_neurons, layer_widths, value_layers
    from utils.models import load_pipeline_from_args
    from utils.outputs import claim_output, write_json

    # every input is read and checked before the output folder is touched
    results = read_results(args.result_file, None) if neuron_mode else None
    prompt_file = args.prompts or (None if neuron_mode else args.dataset)
    frame = read_prompts(prompt_file) if prompt_file else results
    captions = frame["Caption"].tolist()
    types_file = prompt_file or args.dataset
    types = read_prompts(types_file) if args.memorization_type and not prompt_file else frame
    # the results may cover only the first rows of the prompt file
    chosen = rows_of_type(types.head(len(captions)), args.memorization_type, types_file)
    if not chosen:
        raise ValueError(f"no prompt of {types_file} is of --memorization_type {args.memorization_type}")
    pipe = load_pipeline_from_args(args)
    widths = layer_widths(value_layers(pipe.unet))
    if results is not None:
        results = read_results(args.result_file, widths)  # now checked against the model's layers
    counted = [i for i in chosen if i < len(results)] if results is not None else []
    sets = neuron_sets_for(args, results, widths, counted) if neuron_mode else [None]
    neuron_sets = {i: sets[i] if len(sets) == len(captions) else sets[0] for i in range(len(captions))}
    indices = chosen[: args.limit]

    read = {"result_file": neuron_mode, "prompts": bool(args.prompts), "dataset": not args.prompts}
    settings = cli.run_settings(args, inputs=tuple(flag for flag, used in read.items() if used))
    for flag, used in read.items():
        if not used:
            settings.pop(flag)
    shard = Shard.from_env()
    continued = claim_output(args.output, settings, args.overwrite, folder=True)
    if continued:
        logger.info("%s: continuing a run with the same settings", args.output)
    if shard.rank == 0:
        write_json(os.path.join(args.output, CONFIG_NAME), dict(
            vars(args), command=" ".join(sys.argv), prompts={i: captions[i] for i in indices},
            neurons={i: neuron_sets[i] for i in indices}))
    indices = indices[shard.rank::shard.world_size]  # this process's prompts; image names are global
    logger.info("%d prompts, %d neurons deactivated in all", len(indices),
                sum(count_neurons(neuron_sets[i]) for i in indices if neuron_sets[i]))
    generate_images(pipe, {i: captions[i] for i in indices}, preparation(args, pipe, neuron_sets), args.output,
                    seed=args.seed, num_samples=args.num_samples, steps=args.steps,
                    guidance_scale=args.guidance_scale, batch_size=args.batch_size)


if __name__ == "__main__":
    cli.run(main)
