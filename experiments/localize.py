"""Script 3's step: NeMo's localization for every prompt of a memorized prompt file (SPEC §4),
one results row each, flushed as the prompt finishes (a rerun continues)."""

from __future__ import annotations

import logging

from utils import cli
from utils.methods.nemo import options as nemo_options

logger = logging.getLogger("3_detect_memorized_neurons")


def add_args(parser) -> None:
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="memorized prompt file (';'-separated, columns Caption and optionally URL)")
    parser.add_argument("-o", "--output", default="results/memorization_statistics.csv",
                        help="results file; a version alias is appended (_v1_4), as the authors do")
    parser.add_argument("--statistics", default="statistics/statistics_additional_laion_prompts_v1_4.pt",
                        help="activation statistics from script 1 (ours or the authors' file)")
    cli.add_model_args(parser)
    nemo_options.add_detection_args(parser)
    nemo_options.add_localization_args(parser)
    cli.add_run_args(parser)


def cost(args):
    """Script 3's work for its flags (a ``utils.cost.Work``): the prompts up to --limit without
    a row in the results file, each one call of all seeds, then per test (a candidate set
    scored) a probe of --seeds_per_call seeds and, for the tests the probe does not decide, a
    call of all seeds. How many tests and forwards depends on the neurons found: the median of
    the prompts done in this results file, else a prior (``PRIOR_*`` in utils/methods/nemo)."""
    from statistics import median

    from utils.cost import Passes, Work
    from utils.files import read_prompts, written_rows
    from utils.methods.nemo import PRIOR_FORWARDS_PER_SEED, PRIOR_TESTS_PER_PROMPT
    from utils.models import resolve_device

    total = len(read_prompts(args.dataset)[: args.limit])
    written = written_rows(cli.versioned_path(args.output, args.version))
    done = written[written.index < total] if "Sets Scored" in written else written.iloc[:0]
    pending = total - len(done)
    config = nemo_options.localization_config(args, resolve_device(args.device).type)
    seeds = config.samples_per_prompt
    if len(done):
        forwards, tests = median(done["UNet Sample Forwards"]), median(done["Sets Scored"])
        estimate = f"localization: the median of the {len(done)} prompts done ({forwards:.0f} forwards, {tests:.0f} tests)"
    else:
        forwards, tests = PRIOR_FORWARDS_PER_SEED * seeds, PRIOR_TESTS_PER_PROMPT
        estimate = (f"localization: a prior of {forwards} forwards and {tests} tests a prompt (the test bed's; "
                    "rerun --plan once prompts are done for their median)")
    probe = config.seeds_per_call if config.early_decisions else 0
    full = max(forwards - seeds - tests * probe, 0) / seeds  # calls of all seeds after the first
    passes = [Passes(pending, seeds), Passes(pending * tests, probe), Passes(pending * full, seeds)]
    return Work(pending, passes=[p for p in passes if p.calls and p.batch], loads=1,
                estimate=estimate if pending else "")


def run(args) -> None:
    """Localize every pending prompt of ``args.dataset`` into the results file (see ``add_args``)."""
    from tqdm import tqdm

    from utils.distributed import Shard
    from utils.files import COST_COLUMNS, RESULT_COLUMNS, RowWriter, merge_rows, read_prompts
    from utils.layers import count_neurons
    from utils.methods.nemo.localization import localize_captions
    from utils.methods.nemo.noise import load_detection_model
    from utils.methods.nemo.statistics import load_statistics
    from utils.models import resolve_device

    frame = read_prompts(args.dataset)
    if args.samples_per_prompt < 2:
        raise ValueError(f"--samples_per_prompt {args.samples_per_prompt}: the pairwise score needs at least 2")
    device = resolve_device(args.device)
    pipe, layers, shape = load_detection_model(args)
    config = nemo_options.localization_config(args, device.type)
    stats = load_statistics(args.statistics, layers)
    output = cli.versioned_path(args.output, args.version)
    totals = dict(seconds=0.0, forwards=0, sets=0, skipped=0)
    shard = Shard.from_env()
    # every input is checked: only now is the output touched (an earlier run's is continued or refused)
    recorded = cli.run_record(args, inputs=("dataset", "statistics"))
    with RowWriter(shard.part(output), RESULT_COLUMNS + COST_COLUMNS, recorded, args.overwrite) as writer:
        pending = cli.pending(shard, len(frame), writer.done, args.limit)
        groups = [pending[g:g + args.parallel_prompts] for g in range(0, len(pending), args.parallel_prompts)]
        bar = tqdm(total=len(pending), desc="localizing", unit="prompt")
        for group in groups:
            results = localize_captions(pipe, layers, stats, [frame["Caption"][i] for i in group], shape, config,
                                        args.ssim_kernel_size, num_inference_steps=args.num_inference_steps,
                                        timestep_index=args.timestep_index, guidance_scale=args.guidance_scale,
                                        scaling_factor=args.scaling_factor, progress=len(group) == 1)
            for i, result in zip(group, results):
                prompt = frame["Caption"][i]
                writer.write(i, {"Caption": prompt, "URL": frame["URL"][i] if "URL" in frame else "",
                                 "Initial Neurons": result.initial_neurons, "Initial SSIM": result.initial_score,
                                 "Refined Neurons": result.refined_neurons, "Refined SSIM": result.refined_score,
                                 "Seconds": round(result.seconds, 3), "UNet Sample Forwards": result.unet_sample_forwards,
                                 "Sets Scored": result.sets_scored, "Seeds Skipped": result.seeds_skipped})
                logger.info("prompt %d: %d initial, %d refined neurons, score %.3f, %.1f s", i,
                            count_neurons(result.initial_neurons), count_neurons(result.refined_neurons),
                            result.refined_score, result.seconds)
                totals["seconds"] += result.seconds
                totals["forwards"] += result.unet_sample_forwards
                totals["sets"] += result.sets_scored
                totals["skipped"] += result.seeds_skipped
            bar.update(len(group))
        bar.close()
    shard.finish(output, merge_rows)
    print(f"localization: {totals['seconds']:.1f} s, {totals['forwards']} U-Net sample-forwards, "
          f"{totals['sets']} candidate sets scored, {totals['skipped']} seeds skipped by early decisions -> {output}")
