"""The paper's Table 1 as one library call (script 6, ``testbed.table1``, ``testbed.tradeoff``):
``run(config(...), measures, title)`` prints the plan (every step's work and projected time,
``plan_steps``, ``experiments.plan``), runs every step (scripts 2, 3, 4, 7, 8 and 9 as library
steps) for every row and detector, then builds the table, its figures and the cost,
agreement, detection and attack tables from their outputs, and the projected and measured
time of every step, and writes ``table1.md`` and ``table1.json`` once. A rerun with the same
configuration reuses every finished step."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from experiments import attack, detect, finetune, generate, localize, plan, prune
from experiments.plan import Ledger, Step, step_cost, timed
from experiments.rows import ALL_REFINED, FINETUNED, GIVEN, WANDA, Row, chosen_rows, folder_name, table_rows
from utils import cli, defaults
from utils.cost import Work as CostWork
from utils.methods import DETECTORS, dori, nemo, wanda
from utils.outputs import claim_output, write_text

if TYPE_CHECKING:
    from experiments.tables import Measures

# Torch-free above: script 6's --help lists the rows at once; what measures and draws imports below.

logger = logging.getLogger(__name__)
# The table's flags passed on to scripts 7 and 9 under their own names: --wanda_sparsity is
# script 7's --sparsity, --finetune_epochs script 9's --epochs, and so on.
PRUNING_PREFIX, FINETUNING_PREFIX = "wanda_", "finetune_"
# Flags of the table command that change no step's output: rows are folders of their own,
# --plan writes nothing.
TABLE_FREE_FLAGS = ("rows", "plan")


def add_args(parser) -> None:
    """The Table-1 command's flags (script 6; ``config`` takes them by name)."""
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="memorized prompt file (';' CSV with columns Caption and type)")
    parser.add_argument("-o", "--output", default="results/table1", help="folder for every file the run writes")
    parser.add_argument("--statistics", default="statistics/statistics_additional_laion_prompts_v1_4.pt",
                        help="activation statistics for script 3 (script 1, or the authors' file)")
    parser.add_argument("--memorization_threshold", type=float, default=nemo.MEMORIZATION_THRESHOLD,
                        help="tau_mem for script 3 (script 2 on non-memorized prompts; paper: 0.428)")
    parser.add_argument("--ssim_kernel_size", type=cli.positive_int, default=nemo.SSIM_KERNEL_SIZE,
                        help="MS-SSIM kernel of scripts 2 and 3 (11 for SD; 5 for the 24x24 test bed)")
    parser.add_argument("--originals", default=None,
                        help="training images, one per prompt row (0000.png or 0000_anything.jpg); without: no *_Orig")
    parser.add_argument("--references", default=None,
                        help="folder of images every generation is compared with for the nearest-copy columns "
                             "(e.g. all memorized training images); default: --originals")
    parser.add_argument("--copy_threshold", type=float, default=None,
                        help="similarity above which an image copies a reference; default: the SSCD checkpoint's "
                             f"({', '.join(f'{k} {v}' for k, v in defaults.SSCD_COPY_THRESHOLDS.items())}; sources in "
                             f"utils/defaults.py), {defaults.SSCD_COPY_THRESHOLD} with --embedder pixel")
    parser.add_argument("--quality_prompts", default=None,
                        help="held-out prompt file: each setting that changes any prompt is generated on it too, "
                             "for the alignment of the quality column")
    parser.add_argument("--unmemorized_prompts", default=None,
                        help="non-memorized prompt file: with it, both detectors' AUROC / TPR@1%%FPR are reported")
    parser.add_argument("--rows", default=None,
                        help=f"comma-separated subset of the rows ({'; '.join(row.name for row in table_rows())}); "
                             "default: all")
    parser.add_argument("--plan", action="store_true",
                        help="ours: print every step with its units of work (prompts, images, U-Net calls, attack "
                             "steps) and its projected time on this device, from a few U-Net calls of each batch "
                             "shape on the loaded model, and the total; then exit, writing nothing (a real run "
                             "prints the same first and reports the projection beside what each step took)")
    parser.add_argument("--smoke", action="store_true",
                        help="smoke test, not results: script 3 runs with --smoke (each step of its walk once; see "
                             "its --help), e.g. with --limit 1 --steps 1 -n 1 at real model size")
    gen = parser.add_argument_group("generation (script 4's defaults, SPEC §5)")
    gen.add_argument("--steps", type=cli.positive_int, default=defaults.GENERATION_STEPS, help="DDIM steps")
    gen.add_argument("-n", "--num_samples", type=cli.positive_int, default=defaults.NUM_SAMPLES, help="images per prompt")
    gen.add_argument("-g", "--guidance_scale", type=cli.non_negative_float, default=defaults.GUIDANCE_SCALE, help="classifier-free guidance")
    gen.add_argument("-s", "--seed", type=int, default=defaults.GENERATION_SEED, help="seed of each prompt's latents")
    gen.add_argument("-b", "--batch_size", type=cli.positive_int, default=defaults.PROMPTS_PER_BATCH,
                     help="authors' script 4 -b: prompts per pipeline call, all --num_samples images of each in it")
    gen.add_argument("--generation_option", action="append", default=[], metavar="NAME=VALUE",
                     help="a script-4 setting for every row's generation, e.g. han_max_iterations=10 (repeatable; "
                          "default: each method's own, named in script 4's --help)")
    gen.add_argument("--wen_target_loss", type=cli.non_negative_float, default=None,
                     help="Wen's target loss (default: script 4's, the authors' 3 for 4 SD latents)")
    pruning = parser.add_argument_group("Wanda rows (script 7; defaults: ruchikachavhan/concept-prune)")
    pruning.add_argument("--wanda_sparsity", type=cli.fraction, default=wanda.WANDA_SPARSITY,
                         help="share of each ff.net.2 weight row pruned at most per call (skill_ratio)")
    pruning.add_argument("--wanda_subset_size", type=cli.positive_int, default=wanda.WANDA_SUBSET_SIZE, help="|P|, prompts pruned on")
    pruning.add_argument("--wanda_subset_seed", type=int, default=wanda.WANDA_SUBSET_SEED, help="seed of the draw of P")
    attack = parser.add_argument_group("--dori: the attack on every mitigation and adversarial fine-tuning "
                                       "(scripts 8 and 9; defaults: the Dori paper)")
    attack.add_argument("--dori", action="store_true",
                        help="add the adversarial fine-tuning row and a table of the attack's success rate per "
                             "mitigation (needs --originals and --utility_data)")
    attack.add_argument("--utility_data", default=None,
                        help="';' CSV with columns Caption and Image: pairs of fine-tuning's utility loss")
    attack.add_argument("--dori_type", choices=dori.ATTACK_TYPES, default=dori.ATTACK_TYPE,
                        help="memorized prompts attacked and erased (the paper reports VM)")
    attack.add_argument("--attack_similarity", choices=("sscd", "pixel_ssim"), default="sscd",
                        help="replication measure of script 8 (SSCD > 0.7: the paper's)")
    attack.add_argument("--attack_steps", type=cli.positive_int, default=dori.ATTACK_STEPS, help="steps of every attack")
    attack.add_argument("--finetune_epochs", type=cli.positive_int, default=dori.FINETUNE_EPOCHS, help="script 9's epochs")
    attack.add_argument("--finetune_learning_rate", type=cli.positive_float, default=dori.FINETUNE_LEARNING_RATE,
                        help="script 9's U-Net learning rate")
    attack.add_argument("--finetune_utility_batch", type=cli.positive_int, default=dori.UTILITY_BATCH,
                        help="script 9's utility pairs a step (ours)")
    attack.add_argument("--finetune_utility_weight", type=float, default=dori.UTILITY_WEIGHT,
                        help="script 9's weight of the utility loss (paper: 1:1)")
    attack.add_argument("--finetune_empty_caption_share", type=float, default=dori.UTILITY_EMPTY_CAPTION_SHARE,
                        help="script 9's share of utility pairs with the empty caption")
    attack.add_argument("--finetune_schedule", choices=dori.SCHEDULES, default=dori.SCHEDULE,
                        help="script 9's --schedule under a launcher (one process: both are the same): images, "
                             "data-parallel over the memorized images (a model of its own per number of processes), "
                             "or single, one process's updates with each batch split (see script 9's --help)")
    attack.add_argument("--finetune_distillation_weight", type=float, default=dori.DISTILLATION_WEIGHT,
                        help="script 9's weight of the distillation loss towards the model before fine-tuning")
    metric = parser.add_argument_group("columns (SPEC §6)")
    metric.add_argument("--embedder", choices=("sscd", "pixel"), default="sscd",
                        help="SSCD (the paper's) or the weight-free pixel stand-in for *_Orig, *_Gen, D_*")
    cli.add_sscd_model_arg(metric)
    metric.add_argument("--clip-model", default=defaults.CLIP_MODEL, help="CLIP ViT-B/32 for A_CLIP; 'none' to leave it out")
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False, what="memorized prompts")
    parser.set_defaults(log_level="WARNING")


def config(**values) -> argparse.Namespace:
    """The Table-1 configuration: the command's defaults with ``values`` (flag dests) in their place."""
    return cli.step_args(add_args, **values)


def model_options(args) -> dict:
    """--device and --dtype of the table, passed on to its steps (script 7 keeps its own float32
    default: its folder is written in it)."""
    return dict(device=args.device, dtype=args.dtype)


def prefixed(args, prefix: str) -> dict:
    """The table's ``<prefix><name>`` flags as a step's ``<name>`` flags."""
    return {name.removeprefix(prefix): value for name, value in vars(args).items() if name.startswith(prefix)}


def pruning_values(args) -> tuple[str, dict]:
    """Script 7's folder and settings for the Wanda-pruned model of the prompt file."""
    folder = os.path.join(args.output, "wanda_model")
    return folder, dict(version=args.version, dataset=args.dataset, output=folder, device=args.device,
                        **prefixed(args, PRUNING_PREFIX))


def pruned_model(args) -> tuple[str, dict]:
    """Script 7's Wanda-pruned model of the prompt file (made once: a rerun finds it complete);
    returns its folder and summary."""
    folder, values = pruning_values(args)
    return folder, cli.run_step(prune, **values)


def finetuning_values(args, results: str) -> tuple[str, dict]:
    """Script 9's folder and settings for the adversarially fine-tuned model."""
    folder = os.path.join(args.output, "finetuned_model")
    return folder, dict(version=args.version, dataset=args.dataset, originals=args.originals, result_file=results,
                        utility_data=args.utility_data, output=folder, attack_steps=args.attack_steps,
                        memorization_type=attacked_type(args), **prefixed(args, FINETUNING_PREFIX),
                        **model_options(args))


def finetuned_model(args, results: str) -> tuple[str, dict]:
    """Script 9's adversarially fine-tuned model (made once: a rerun finds it complete)."""
    folder, values = finetuning_values(args, results)
    return folder, cli.run_step(finetune, **values)


def attacked_type(args) -> str | None:
    return None if args.dori_type == "all" else args.dori_type


def attack_runs(args, results: str, models: dict[str, str], neuron_sets: dict[str, str] | None = None) -> dict:
    """Script 8's settings against every mitigation, by mitigation. neuron_sets: further rows,
    name -> a results file whose refined neurons are deactivated (e.g. the planted bed's ground
    truth), attacked on the given model after NeMo's."""
    targets = {"none": (models[GIVEN], None), "NeMo": (models[GIVEN], results)}
    targets.update({name: (models[GIVEN], path) for name, path in (neuron_sets or {}).items()})
    if WANDA in models:
        targets["Wanda"] = (models[WANDA], None)
    if FINETUNED in models:
        targets["adversarial fine-tuning"] = (models[FINETUNED], None)
    return {name: dict(version=model, dataset=args.dataset, originals=args.originals, resume=True,
                       output=os.path.join(args.output, "attack", folder_name(name)), similarity=args.attack_similarity,
                       attack_steps=args.attack_steps, num_samples=args.num_samples, steps=args.steps,
                       guidance_scale=args.guidance_scale, seed=args.seed, neurons_from=neurons,
                       memorization_type=attacked_type(args), sscd_model=args.sscd_model, **model_options(args))
            for name, (model, neurons) in targets.items()}


def run_attacks(args, results: str, models: dict[str, str], neuron_sets: dict[str, str] | None = None,
                ledger: Ledger | None = None) -> dict:
    """Script 8 against every mitigation of ``attack_runs`` (this process's share of each);
    returns its folder by mitigation."""
    folders = {}
    for name, values in attack_runs(args, results, models, neuron_sets).items():
        with timed(ledger, plan.attack_step(name)):
            cli.run_step(attack, **values)
        folders[name] = values["output"]
    return folders


def attack_summaries(folders: dict[str, str]) -> dict:
    """Script 8's success rates per memorization type, by mitigation, from its folders."""
    from utils.files import read_json

    return {name: read_json(os.path.join(folder, attack.SUMMARY_NAME), "attack summary")["summary"]
            for name, folder in folders.items()}


def generation_options(options: list[str]) -> list[str]:
    """``NAME=VALUE`` settings as script 4's flags (``--NAME VALUE``), checked by its parser."""
    argv = []
    for option in options:
        name, equals, value = option.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--generation_option: expected NAME=VALUE, got {option!r}")
        argv += [f"--{name.strip()}", value.strip()]
    try:
        cli.step_args(generate.add_args, argv)
    except (ValueError, SystemExit) as error:  # argparse exits on a value of the wrong type
        raise ValueError(f"--generation_option: script 4 does not take {' '.join(argv)} ({error})") from None
    return argv


def generation_runs(args, results: str, rows: list[Row], models: dict[str, str],
                    all_refined: int) -> list[tuple[str, bool, dict]]:
    """Script 4's runs of the table in order, (row, held out, settings): every row and, with
    --quality_prompts, its held-out run. models: GIVEN -> the given model, and the models
    scripts 7 and 9 make; all_refined: the distinct refined neurons of the table's prompts."""
    generation = dict(steps=args.steps, num_samples=args.num_samples, guidance_scale=args.guidance_scale,
                      seed=args.seed, batch_size=args.batch_size, result_file=results, **model_options(args))
    if args.wen_target_loss is not None:
        generation["wen_target_loss"] = args.wen_target_loss
    runs = []
    for row in rows:
        output = os.path.join(args.output, "images", folder_name(row.name))
        runs.append((row.name, False, dict(dataset=args.dataset, output=output, version=models[row.model],
                                           limit=args.limit, **generation, **row.generation())))
        if args.quality_prompts and row.on_held_out:
            held_out = {k: all_refined if v == ALL_REFINED else v for k, v in row.generation(held_out=True).items()}
            output = os.path.join(args.output, "quality", folder_name(row.name))
            runs.append((row.name, True, dict(prompts=args.quality_prompts, version=models[row.model], output=output,
                                              **generation, **held_out)))
    return runs


def generate_rows(args, results: str, rows: list[Row], models: dict[str, str],
                  ledger: Ledger | None = None) -> tuple[dict, dict]:
    """Script 4 for every row (and its held-out run; this process's share of each); returns the
    image folders by row."""
    from utils.files import read_results
    from utils.methods.nemo import selection

    all_refined = len(selection.neuron_frequencies(list(read_results(results, None)["Refined Neurons"])))
    options = generation_options(args.generation_option)
    folders, quality = {}, {}
    for name, held_out, values in generation_runs(args, results, rows, models, all_refined):
        with timed(ledger, plan.generation_step(name, held_out)):
            cli.run_step(generate, options, **values)
        (quality if held_out else folders)[name] = values["output"]
    return folders, quality


def detection_runs(args) -> dict[str, dict[str, dict]]:
    """Script 2's settings of every registered detector's comparison on the memorized and the
    non-memorized prompts, by comparison and label."""
    return {name: {label: dict(prompts=prompts, output=os.path.join(args.output, "detection", f"{stem}_{label}.csv"),
                               resume=True, score=detector.name, version=args.version,
                               ssim_kernel_size=args.ssim_kernel_size, **options, **model_options(args))
                   for label, prompts in (("memorized", args.dataset), ("unmemorized", args.unmemorized_prompts))}
            for detector in DETECTORS.values() for name, (stem, options) in detector.comparisons.items()}


def detection_files(args, ledger: Ledger | None = None) -> dict[str, dict[str, str]]:
    """Script 2 for every comparison of ``detection_runs`` (resumed; this process's share of
    each); returns the score files by comparison and label."""
    files = {}
    for name, runs in detection_runs(args).items():
        with timed(ledger, plan.detection_step(name)):
            for values in runs.values():
                cli.run_step(detect, **values)
        files[name] = {label: values["output"] for label, values in runs.items()}
    return files


def detection_figures(args, files: dict[str, dict[str, str]]) -> dict:
    """AUROC and TPR@1%FPR of every comparison of ``detection_files``, with the detector's cost:
    median seconds per prompt over both files."""
    import pandas as pd

    from metrics import detection
    from utils.files import read_csv

    figures = {}
    for name, paths in files.items():
        stem = os.path.basename(paths["memorized"]).removesuffix("_memorized.csv")
        figures[name] = detection.main(["-m", paths["memorized"], "-u", paths["unmemorized"], "-p", args.dataset,
                                        "-o", os.path.join(args.output, "detection", f"{stem}.json")])["summary"]
        seconds = pd.concat([read_csv(path, ("Seconds",), "score file")["Seconds"] for path in paths.values()])
        for group in figures[name].values():
            group["seconds_per_prompt"] = float(seconds.median())
    return figures


def claim_table_folder(args, output: str, shard) -> None:
    """The table's folder, for this configuration (``settings.json``): a rerun continues every
    step, another configuration is refused, --overwrite clears the folder (rank 0 of a launch
    first; the other processes then find it claimed)."""
    from utils import distributed

    record = {k: v for k, v in cli.run_record(args).items() if k not in TABLE_FREE_FLAGS}
    with distributed.main_process_first(shard):
        if claim_output(output, record, args.overwrite and shard.rank == 0, folder=True) and shard.rank == 0:
            logger.warning("%s: continuing a run with the same configuration (finished steps are kept)", output)


def check_inputs(args) -> None:
    """Every input is read and checked before hours of work, not after."""
    from utils.files import read_csv, read_prompts

    if args.dori and not (args.originals and args.utility_data):
        raise ValueError("--dori needs --originals (the images to attack and erase) and --utility_data")
    generation_options(args.generation_option)
    for path in (args.dataset, args.quality_prompts, args.unmemorized_prompts):
        if path:
            read_prompts(path)
    if args.utility_data:
        read_csv(args.utility_data, ("Caption", "Image"), "utility data file")


def results_path(args) -> str:
    """Script 3's results file of the table."""
    return cli.versioned_path(os.path.join(args.output, "memorization_statistics.csv"), args.version)


def localization_values(args) -> dict:
    """Script 3's settings for the table's localization."""
    return dict(version=args.version, dataset=args.dataset, statistics=args.statistics, resume=True,
                output=os.path.join(args.output, "memorization_statistics.csv"),
                memorization_threshold=args.memorization_threshold, ssim_kernel_size=args.ssim_kernel_size, limit=args.limit, smoke=args.smoke, **model_options(args))


def localization_results(args) -> str:
    """Script 3's results of the memorized prompts (resumed); returns the results file."""
    cli.run_step(localize, **localization_values(args))
    return results_path(args)


def score_histogram(args, types: dict[int, str]) -> str:
    """The NeMo scores of the memorized prompts by type and of the non-memorized ones (paper
    Fig. 2a), from the detection step's files; returns the PNG."""
    from metrics import plots

    scores = {label: plots.scores_of(plots.read_scores(os.path.join(args.output, "detection", f"nemo_{label}.csv")))
              for label in ("memorized", "unmemorized")}
    kinds = [types.get(i, "memorized") for i in range(len(scores["memorized"]))]
    series = {"non-memorized": scores["unmemorized"].numpy()}
    series.update({kind: scores["memorized"].numpy()[[k == kind for k in kinds]] for kind in sorted(set(kinds))})
    return plots.score_distributions(series, args.memorization_threshold,
                                     os.path.join(args.output, "memorization_scores.png"))


@dataclass
class Work:
    """What the table's steps made: script 3's results file, the models by name (GIVEN and
    those of scripts 7 and 9, with their summaries), the image folders by row and of the
    held-out runs, the detectors' score files and the attacks' folders."""
    results: str
    models: dict[str, str]
    pruning: dict | None
    finetuning: dict | None
    folders: dict[str, str]
    quality: dict[str, str]
    detection: dict[str, dict[str, str]] = field(default_factory=dict)
    attacks: dict[str, str] = field(default_factory=dict)


def plan_steps(args, rows: list[Row], attack_neuron_sets: dict[str, str] | None = None, before: list[Step] = (),
               after: list[Step] = ()) -> list[Step]:
    """The steps ``run_steps`` runs for ``args`` and ``rows``, in its order, with their work
    (``experiments.plan``): ``before``, the table's, ``after`` (a caller's steps) and the metrics."""
    steps = list(before) + [step_cost(plan.LOCALIZATION, localize, **localization_values(args))]
    models = {GIVEN: args.version}
    if any(row.model == WANDA for row in rows):
        models[WANDA], values = pruning_values(args)
        steps.append(step_cost(plan.PRUNING, prune, **values))
    results = results_path(args)
    if args.dori:
        models[FINETUNED], values = finetuning_values(args, results)
        steps.append(step_cost(plan.FINETUNING, finetune, shared=False, **values))
    options = generation_options(args.generation_option)
    images = 0  # what the metrics step reads; any count of refined neurons costs the same
    for name, held_out, values in generation_runs(args, results, rows, models, all_refined=1):
        step_args = cli.step_args(generate.add_args, options, **values)
        steps.append(Step(plan.generation_step(name, held_out), generate.cost(step_args)))
        images += len(generate.prompt_rows(step_args)) * args.num_samples
    if args.unmemorized_prompts:
        for name, runs in detection_runs(args).items():
            work = [step_cost(name, detect, **values).work for values in runs.values()]
            steps.append(Step(plan.detection_step(name), sum(work[1:], work[0])))
    if args.dori:
        steps += [step_cost(plan.attack_step(name), attack, **values)
                  for name, values in attack_runs(args, results, models, attack_neuron_sets).items()]
    return steps + list(after) + [Step(plan.METRICS, CostWork(measured=images))]


def run_steps(args, rows: list[Row], shard, attack_neuron_sets: dict[str, str] | None = None,
              ledger: Ledger | None = None) -> Work:
    """Every step of the table for this process (each timed in ``ledger``): under a launcher
    each step splits its prompts over the processes, which all wait for the last before the
    next step reads its output."""
    from utils.distributed import barrier

    with timed(ledger, plan.LOCALIZATION):
        results = localization_results(args)
    barrier(shard)
    models, pruning, finetuning = {GIVEN: args.version}, None, None
    if any(row.model == WANDA for row in rows):
        with timed(ledger, plan.PRUNING):
            models[WANDA], pruning = pruned_model(args)
    if args.dori:
        with timed(ledger, plan.FINETUNING):
            models[FINETUNED], finetuning = finetuned_model(args, results)
        barrier(shard)
    work = Work(results, models, pruning, finetuning, *generate_rows(args, results, rows, models, ledger))
    barrier(shard)
    if args.unmemorized_prompts:
        work.detection = detection_files(args, ledger)
        barrier(shard)
    if args.dori:
        work.attacks = run_attacks(args, results, models, attack_neuron_sets, ledger)
        barrier(shard)
    return work


def run(args, measures: Measures, title: str, claim: bool = True,
        attack_neuron_sets: dict[str, str] | None = None, steps: Callable[[Ledger | None], object] | None = None,
        sections: Callable[[dict, object], str] | None = None, ledger: Ledger | None = None) -> dict:
    """Every step of the table for the configuration ``args`` (``config``); ``measures`` decide
    its columns. ``claim``: check and record the output folder's configuration here (False: the
    caller has). ``attack_neuron_sets``: with --dori, further neuron sets to attack
    (``run_attacks``). ``steps(ledger) -> made``: further steps of the caller, run by every
    process after the table's (timed in ``ledger``); ``sections(report, made) -> markdown``:
    further sections, added to the report and the table before both are written.

    First the plan: every step's work and projected time (``plan_steps``, ``experiments.plan``),
    calibrated by every process at once and printed by rank 0; ``ledger``: the caller's plan
    instead (its own steps among them). With --plan that is all (nothing is
    written; returns ``{"plan": ...}``); otherwise every step is timed and table1.md gets the
    projection beside what each took.

    Under ``accelerate launch`` or ``torchrun`` (WORLD_SIZE > 1) the processes share every step
    (``run_steps``) and the per-prompt measures (``measured_scores``); rank 0 alone summarizes
    and writes, and every process returns its report.
    """
    from utils import distributed
    from utils.models import resolve_device

    rows = chosen_rows(args.rows, args.dori)
    check_inputs(args)
    with distributed.process_group(resolve_device(args.device)) as shard:
        if claim and not args.plan:
            claim_table_folder(args, args.output, shard)
        if ledger is None:
            ledger = plan.prepared(plan_steps(args, rows, attack_neuron_sets), args, measures, shard)
        if args.plan:
            return {"plan": ledger.report() if ledger else None}
        distributed.barrier(shard)  # every process's calibration is over
        work = run_steps(args, rows, shard, attack_neuron_sets, ledger)
        made = steps(ledger) if steps else None
        distributed.barrier(shard)
        with timed(ledger, plan.METRICS):
            scores = measured_scores(args, work, measures, shard)
        return distributed.main_process_result(
            shard, lambda: write_report(args, work, measures, title, sections, made, ledger, scores))


def table_inputs(args) -> tuple[dict[int, str], dict[int, str], dict[int, str], dict[int, str]]:
    """The memorized prompts' captions and types, the held-out prompts' captions and the
    originals, by prompt index."""
    from utils.files import read_prompts
    from utils.images import original_images

    prompts = read_prompts(args.dataset)
    types = dict(enumerate(prompts["type"])) if "type" in prompts else {}
    quality_captions = dict(enumerate(read_prompts(args.quality_prompts)["Caption"])) if args.quality_prompts else {}
    originals = original_images(args.originals) if args.originals else {}
    return dict(enumerate(prompts["Caption"])), types, quality_captions, originals


def measured_scores(args, work: Work, measures: Measures, shard) -> dict:
    """The per-prompt measures of every row (``tables.table_scores``): each process measures
    its share of the memorized and of the held-out prompts, and every process gets them all."""
    from experiments import tables
    from utils.distributed import gather_by_index

    captions, _, quality_captions, originals = table_inputs(args)
    mine = tables.table_scores(work.folders, work.quality, originals, captions, quality_captions, measures,
                               set(shard.indices(len(captions))), set(shard.indices(len(quality_captions))))
    return {part: {name: gather_by_index(shard, values) for name, values in named.items()}
            for part, named in mine.items()}


def write_report(args, work: Work, measures: Measures, title: str,
                 sections: Callable[[dict, object], str] | None = None, made: object = None,
                 ledger: Ledger | None = None, scores: dict | None = None) -> dict:
    """Table 1 and its tables and figures from the steps' outputs and the prompts' ``scores``
    (``measured_scores``; None: measured here), and the caller's ``sections`` of what its
    steps ``made``, timed as the metrics step of ``ledger``, and the projected and measured
    cost of every step; writes table1.md and table1.json and returns the report."""
    from metrics.cli import write_json

    with timed(ledger, plan.METRICS):
        report, text = table_report(args, work, measures, title, sections, made, scores)
    if ledger:
        report[plan.REPORT_KEY] = ledger.report()
        text += "\n" + ledger.markdown()
    write_json(os.path.join(args.output, "table1.json"), report)
    write_text(os.path.join(args.output, "table1.md"), text)
    print("\n" + text)
    return report


def table_report(args, work: Work, measures: Measures, title: str,
                 sections: Callable[[dict, object], str] | None = None, made: object = None,
                 scores: dict | None = None) -> tuple[dict, str]:
    """The report and the markdown of ``write_report`` but the cost of the steps."""
    from experiments import locality, tables
    from metrics import plots
    from utils.files import read_results
    from utils.layers import count_neurons

    frame = read_results(work.results, None)
    refined = dict(enumerate(frame["Refined Neurons"]))
    captions, types, quality_captions, originals = table_inputs(args)
    pruning, finetuning = work.pruning, work.finetuning
    report = tables.build_table(work.folders, work.quality, originals, captions, quality_captions, types,
                                {i: count_neurons(cell) for i, cell in refined.items()}, measures,
                                set(pruning["rows"]) if pruning else set(), scores)
    report["localization"] = {key: float(frame[column].median()) if column in frame else None
                              for key, column in (("seconds", "Seconds"), ("forwards", "UNet Sample Forwards"))}
    report["wanda"], report["finetuning"] = pruning, finetuning
    text = tables.markdown(report, title) + "\n" + tables.cost_markdown(report["rows"], report["localization"],
                                                                        pruning, finetuning)
    if all(name in report["rows"] for name in (locality.NEMO, locality.PRUNED, locality.BOTH)):
        agreement = locality.agreement_from(report, types, set(pruning["rows"]))
        agreement["figure"] = locality.agreement_figure(agreement, os.path.join(args.output, "nemo_wanda_agreement.png"))
        report["nemo_wanda_agreement"] = agreement
        text += "\n" + tables.agreement_markdown(agreement)
    report["figures"] = tables.write_grids(report, work.folders, originals, captions, types, measures, args.output)
    report["figures"].append(plots.neurons_per_layer(
        plots.neuron_counts(list(refined.values()), [types.get(i, "all") for i in refined])[1],
        os.path.join(args.output, "neurons_per_layer.png")))
    if work.detection:
        report["detection"] = detection_figures(args, work.detection)
        text += "\n" + tables.detection_markdown(report["detection"])
        report["figures"].append(score_histogram(args, types))
    if work.attacks:
        report["attack"] = attack_summaries(work.attacks)
        text += "\n" + tables.attack_markdown(report["attack"], args.dori_type)
    if sections:
        text += sections(report, made)
    text += "\nFigures: " + ", ".join(os.path.basename(f) for f in report["figures"]) + "\n"
    return report, text


def paper_measures(args) -> Measures:
    """The paper's columns (SSCD or a stand-in embedder, CLIP) and the nearest-copy references."""
    from experiments import tables
    from metrics.copies import embedded_references
    from metrics.embedders import CLIPEmbedder, image_embedder
    from utils.assets import sscd_copy_threshold
    from utils.defaults import SSCD_COPY_THRESHOLD
    from utils.images import original_images
    from utils.models import resolve_device

    device = resolve_device(args.device)
    embedder = image_embedder(args.embedder, device, args.sscd_model, args.clip_model)
    measures = tables.embedder_measures(embedder, None if args.clip_model == "none" else CLIPEmbedder(args.clip_model, device))
    folder = args.references or args.originals
    if folder:
        paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                 if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))] if os.path.isdir(folder) else []
        if not paths:
            raise ValueError(f"reference folder {folder} has no images (.png, .jpg, .jpeg, .webp)")
        threshold = args.copy_threshold
        if threshold is None:
            threshold = sscd_copy_threshold(embedder.checkpoint) if embedder.name == "sscd" else SSCD_COPY_THRESHOLD
        measures.references = embedded_references(embedder, paths, [os.path.basename(p) for p in paths], threshold)
        originals = original_images(args.originals) if args.originals else {}
        measures.own_reference = {prompt: os.path.basename(path) for prompt, path in originals.items()}
        measures.notes.append(f"Nearest and Copy_* compare each image with the {len(paths)} images of {folder}, "
                              f"a copy above {threshold}")
    return measures
