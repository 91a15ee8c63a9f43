"""Script 4's step: a prompt file's images under one registered mitigation (SPEC §5 and the
rows of Table 1), written to a folder that a rerun with the same settings continues."""

from __future__ import annotations

import logging
import os
import sys

from utils import cli, defaults
from utils.methods import MITIGATIONS

logger = logging.getLogger("4_generate_images")


def add_args(parser) -> None:
    """Script 4's flags: its own, one flag per registered mitigation and their settings."""
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
    group = parser.add_argument_group("mitigation (at most one)").add_mutually_exclusive_group()
    for mitigation in MITIGATIONS.values():
        if mitigation.takes is None:
            group.add_argument(f"--{mitigation.name}", action="store_true", help=mitigation.help)
        else:
            group.add_argument(f"--{mitigation.name}", type=mitigation.takes, metavar=mitigation.metavar,
                               help=mitigation.help)
    added = []
    for mitigation in MITIGATIONS.values():
        if mitigation.add_options and mitigation.add_options not in added:
            mitigation.add_options(parser)
            added.append(mitigation.add_options)
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False)


def chosen(args):
    """The mitigation the flags choose, None for none."""
    picked = [m for m in MITIGATIONS.values() if getattr(args, m.name, None) not in (None, False)]
    return picked[0] if picked else None


def check(args) -> None:
    """Refuse flags that do not go together."""
    mitigation = chosen(args)
    if args.prompts and mitigation and mitigation.per_prompt:
        raise ValueError(f"--prompts works with the mitigations without per-prompt neurons, not --{mitigation.name}")


def prompt_rows(args) -> list[int]:
    """The rows of --prompts (else --dataset, whose first rows a neuron mode's results cover) of
    --memorization_type up to --limit: the prompts the step generates."""
    from utils.files import read_prompts, rows_of_type

    path = args.prompts or args.dataset
    return rows_of_type(read_prompts(path), args.memorization_type, path)[: args.limit]


def cost(args):
    """Script 4's work for its flags (a ``utils.cost.Work``): the prompts of ``prompt_rows``
    that --output does not hold yet, their images, the denoising loop's U-Net calls (both
    halves with guidance above 1 or a mitigation's schedule) and the mitigation's own calls
    (its registered ``cost``)."""
    from utils.cost import Passes, PromptCost, Work
    from utils.generation import prompt_done, read_records
    from utils.methods.registry import load

    mitigation = chosen(args)
    prompt = load(mitigation.cost)(args) if mitigation and mitigation.cost else PromptCost()
    rows = prompt_rows(args)
    done = read_records(args.output) if os.path.isdir(args.output) else {}
    pending = [i for i in rows if not prompt_done(args.output, i, args.num_samples, done)]
    per_call = 1 if prompt.own_call else args.batch_size  # prompts a pipeline call carries
    latents = args.num_samples * (2 if prompt.both_halves or args.guidance_scale > 1 else 1)  # a prompt's, a call
    full, rest = divmod(len(pending), per_call)
    passes = [Passes(calls * args.steps, prompts * latents) for calls, prompts in ((full, per_call), (1, rest))
              if calls and prompts]
    passes += [p.times(len(pending)) for p in prompt.passes]
    return Work(len(pending), len(pending) * args.num_samples, passes, loads=1,
                estimate=prompt.estimate if pending else "")


def run(args) -> None:
    """Generate every chosen prompt's images into ``args.output`` (see ``add_args``)."""
    from utils.distributed import Shard
    from utils.files import read_prompts, read_results, rows_of_type
    from utils.generation import CONFIG_NAME, generate_images, unchanged
    from utils.layers import count_neurons, layer_widths, value_layers
    from utils.methods.registry import load
    from utils.models import load_pipeline_from_args
    from utils.outputs import claim_output, write_json

    check(args)
    mitigation = chosen(args)
    reads_neurons = bool(mitigation and mitigation.neuron_sets)
    # every input is read and checked before the output folder is touched
    results = read_results(args.result_file, None) if reads_neurons else None
    prompt_file = args.prompts or (None if reads_neurons else args.dataset)
    frame = read_prompts(prompt_file) if prompt_file else results
    captions = frame["Caption"].tolist()
    types_file = prompt_file or args.dataset
    types = read_prompts(types_file) if args.memorization_type and not prompt_file else frame
    # the results may cover only the first rows of the prompt file
    rows = rows_of_type(types.head(len(captions)), args.memorization_type, types_file)
    if not rows:
        raise ValueError(f"no prompt of {types_file} is of --memorization_type {args.memorization_type}")
    pipe = load_pipeline_from_args(args)
    widths = layer_widths(value_layers(pipe.unet))
    sets = [None]
    if reads_neurons:
        results = read_results(args.result_file, widths)  # now checked against the model's layers
        sets = load(mitigation.neuron_sets)(args, results, widths, [i for i in rows if i < len(results)])
    neuron_sets = {i: sets[i] if len(sets) == len(captions) else sets[0] for i in range(len(captions))}
    indices = rows[: args.limit]

    read = {"result_file": reads_neurons, "prompts": bool(args.prompts), "dataset": not args.prompts}
    settings = cli.run_record(args, inputs=tuple(flag for flag, used in read.items() if used))
    for flag, used in read.items():
        if not used:
            settings.pop(flag)
    shard = Shard.from_env()
    if claim_output(args.output, settings, args.overwrite, folder=True):
        logger.info("%s: continuing a run with the same settings", args.output)
    if shard.rank == 0:
        write_json(os.path.join(args.output, CONFIG_NAME), dict(
            vars(args), command=" ".join(sys.argv), prompts={i: captions[i] for i in indices},
            neurons={i: neuron_sets[i] for i in indices}))
    indices = indices[shard.rank::shard.world_size]  # this process's prompts; image names are global
    logger.info("%d prompts, %d neurons deactivated in all", len(indices),
                sum(count_neurons(neuron_sets[i]) for i in indices if neuron_sets[i]))
    prepare = load(mitigation.prepare)(pipe, args, neuron_sets) if mitigation else unchanged(pipe)
    generate_images(pipe, {i: captions[i] for i in indices}, prepare, args.output,
                    seed=args.seed, num_samples=args.num_samples, steps=args.steps,
                    guidance_scale=args.guidance_scale, batch_size=args.batch_size)
