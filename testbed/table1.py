"""The test bed's Table 1: every row of the paper's table, and Wanda's pruned model, on the
built-in model (`make demo`), the natural test bed or (--bed planted) the planted one.

Runs script 1's step (statistics) and script 2's (tau_mem) on the test bed's prompt files, then
the Table-1 run (``experiments.table1``, script 6) on its memorized prompts: NeMo's localization, Wanda's pruned model,
script 4 for every setting, each global setting also on held-out ordinary prompts, nearest
copies among all 24 memorized training images, both detectors, and with --dori adversarial
fine-tuning and the attack on every mitigation.
On the planted bed (testbed/train_planted.py) also its criteria (its known neurons off, and as
many random ones) and the localization table: recall and precision of the ground truth for
NeMo's initial and refined neurons, set sizes, and whether each set stops the replication.
SSCD and CLIP need weights this repository cannot ship, so the columns are weight-free
stand-ins: pixel SSIM to the training image (SSIM_Orig, median over a prompt's images), the
pixel embedder of metrics/ (Pix_Gen, D_Pix for SSCD_Gen and D_SSCD) and, for prompt
alignment, the share of held-out images whose shape and background colours are the
caption's (A_color, ``testbed.alignment``). Everything goes to --output; reruns reuse
finished steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import testbed
from experiments import detect, generate, plan, statistics, table1 as reproduce, tables
from experiments.rows import IN_P, PLAIN, WANDA, chosen_rows, folder_name, table_rows
from metrics import ground_truth
from metrics.copies import References
from metrics.embedders import PixelEmbedder
from metrics.pixel_quality import pixel_kid
from metrics.pixel_ssim import pixel_ssim_matrix, ssim_to_original
from testbed.alignment import alignment
from testbed.synthetic_data import ordinary_combination, render_ordinary, write_ordinary_pairs
from testbed.train_testbed import SEED
from utils import cli, distributed
from utils.defaults import GENERATION_STEPS, NUM_SAMPLES
from utils.files import read_prompts, read_results, read_threshold, threshold_path
from utils.images import generated_images, load_images, original_images
from utils.methods import nemo
from utils.methods.dori import ATTACK_TYPE, ATTACK_TYPES, SCHEDULE, SCHEDULES
from utils.methods.wanda import WANDA_SUBSET_SIZE
from utils.outputs import atomic_path


@dataclass(frozen=True)
class Bed:
    """A built-in model and its files."""

    model: str
    memorized: str
    unmemorized: str
    additional: str
    originals: str
    ground_truth: str | None = None  # the planted bed's known neurons
    demo_prompts: tuple = ()  # (type, count) of the demo


def planted_path(*parts: str) -> str:
    return os.path.join(testbed.PLANTED_DIR, *parts)


# Demo size (ours): `make demo` runs both beds in under 15 minutes on 2 CPU cores (BENCHMARKS.md,
# "The demo"). The natural bed has 12 memorized prompts of each type and 25 held-out ordinary
# prompts; the planted bed has 6 VM and 2 TM planted prompts.
BEDS = {
    "natural": Bed(testbed.MODEL_DIR, testbed.MEMORIZED_PROMPTS, testbed.UNMEMORIZED_PROMPTS, testbed.ADDITIONAL_PROMPTS,
                   testbed.ORIGINALS_DIR, demo_prompts=(("VM", 1), ("TM", 1))),
    "planted": Bed(planted_path("model"), *(planted_path("prompts", f"{kind}_prompts.csv")
                                            for kind in ("memorized", "unmemorized", "additional")),
                   planted_path("originals"), planted_path("ground_truth.json"), demo_prompts=(("VM", 1), ("TM", 1))),
}
PLANTED_OFF, PLANTED_RANDOM = "planted neurons", "random neurons (planted count)"
WANDA_ROW = next(row.name for row in table_rows() if row.model == WANDA and not row.neurons)
DEMO_QUALITY_PROMPTS = 1  # held-out prompts of A_color and KID_pix in the demo (ours, as above)
DEMO_DETECTION_PROMPTS = 10  # held-out prompts of the detectors in the demo (ours, as above)
# Wanda's share of each weight row: the test bed's ff.net.2 rows have 64 inputs (5 layers) and
# 128 (11 layers); the authors' 1% prunes none of a row of 64 (int(0.01 * 64) = 0) and one of a
# row of 128 (383 weights in all on 4 VM prompts); 5% (ours) prunes 3 and 6 of every row.
WANDA_SPARSITY = 0.05
# Adversarial fine-tuning (--dori) on the test bed, each knob ours, chosen by the trade-off
# sweeps (testbed.tradeoff; BENCHMARKS.md, docs/tradeoff_finetuning.png): a distillation loss
# towards the model before fine-tuning holds its utility, twice the rate the U-Net was trained
# at stops the attack, and all 64 utility pairs in each update keep held-out A_color and KID_pix
# within 10% of the unmodified model.
FINETUNE_LEARNING_RATE = 1e-3
FINETUNE_DISTILLATION_WEIGHT = 100.0
FINETUNE_UTILITY_BATCH = 64
# Han et al.'s per-sample adjustment on the test bed (ours): its latents start far above the
# authors' target loss (0.9, for SD's 4x64x64 latents) and take hundreds of their 1000 passes
# at most, minutes a prompt on the CPU; 10 passes, Wen's cap, keep the demo's time.
HAN_MAX_ITERATIONS = 10
UTILITY_PAIRS = 64  # rendered ordinary training pairs of the utility loss, drawn with SEED + 3
# (the training phases draw with SEED + 1 and SEED + 2)
# An image copies a training image when their pixel SSIM exceeds this (held-out ordinary images
# score 0.55 between seeds only through their flat background: BENCHMARKS.md).
PIXEL_COPY_THRESHOLD = 0.5
REFERENCE_SEED = SEED + 4  # ours: draws the shapes' places and sizes of KID_pix's reference renders
STATISTICS_STEP, THRESHOLD_STEP = "statistics (script 1)", "tau_mem (script 2)"  # the bed's steps before the table's


def reference_renders(captions: list[str], seed: int = REFERENCE_SEED) -> list[Image.Image]:
    """One freshly rendered image per caption (an ordinary caption's colour, shape and background
    at a random place and size): the reference set of KID_pix."""
    rng = np.random.default_rng(seed)
    combos = [ordinary_combination(caption) for caption in captions]
    if None in combos:
        raise ValueError(f"KID_pix needs ordinary captions ('a red circle on gray background'), got "
                         f"{captions[combos.index(None)]!r}")
    return [Image.fromarray(render_ordinary(combo, rng)) for combo in combos]


def kid_to_renders(images: list[Image.Image], captions: list[str]) -> float:
    """KID_pix of held-out images against renders of their captions, one per image."""
    return pixel_kid(images, reference_renders(captions))


def write_csv(frame, path: str) -> None:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, sep=";")


def wanda_subset_size(prompts: int) -> int:
    """|P|: the authors' 10, or half the prompts of a smaller run, so some are left to test on."""
    return min(WANDA_SUBSET_SIZE, max(1, prompts // 2))


def memorized_references(originals: str) -> References:
    """Every memorized training image of a bed, compared by pixel SSIM; named by their row in
    the full memorized prompt file."""
    paths = original_images(originals)
    names = [f"{row:04d}" for row in sorted(paths)]
    pixels = torch.stack([to_tensor(image) for image in load_images([paths[row] for row in sorted(paths)])])
    return References(names, lambda images: pixel_ssim_matrix(images, pixels), PIXEL_COPY_THRESHOLD)


def testbed_measures(rows: list[int], originals: str) -> tables.Measures:
    """The weight-free columns; ``rows``: the full-file row of each prompt of the run."""
    pixels = PixelEmbedder()
    return tables.Measures(
        "SSIM_Orig", "Pix_Gen", "D_Pix", pixels,
        lambda original, images, _embeddings: ssim_to_original(original, images).median().item(),
        align_name="A_color", align=alignment, align_memorized=False, quality_name="KID_pix",
        image_quality=kid_to_renders,
        notes=["Weight-free stand-ins: SSIM_Orig is pixel SSIM to the training image (median over a prompt's "
               "images); Pix_Gen and D_Pix use 32x32 pixel thumbnails for SSCD_Gen and D_SSCD; A_color is the "
               "share of images of held-out ordinary prompts whose shape and background colours are the caption's "
               f"(for A_CLIP); Nearest and Copy_* compare each image with all the bed's memorized training images by "
               f"pixel SSIM, a copy above {PIXEL_COPY_THRESHOLD}; KID_pix (x 100, lower is better) compares every "
               "held-out image with a fresh render of its caption on thumbnail pixels and colour histograms "
               "(metrics/pixel_quality.py)"],
        references=memorized_references(originals), own_reference={i: f"{row:04d}" for i, row in enumerate(rows)})


def subset_rows(counts: dict[str, int], bed: Bed) -> list[int]:
    """The rows, in the bed's full prompt file, of its first ``counts[type]`` memorized prompts
    of each type."""
    prompts = read_prompts(bed.memorized)
    return [i for kind, n in counts.items() for i in prompts.index[prompts["type"] == kind][:n]]


def write_subset(rows: list[int], output: str, bed: Bed) -> str:
    """The prompts of ``rows`` as a prompt file, with their training images renumbered by row
    in ``output/originals``; returns the prompt file."""
    path = os.path.join(output, "memorized_prompts.csv")
    write_csv(read_prompts(bed.memorized).loc[rows].reset_index(drop=True), path)
    folder = os.path.join(output, "originals")
    os.makedirs(folder, exist_ok=True)
    originals = original_images(bed.originals)
    for new, row in enumerate(rows):
        with atomic_path(os.path.join(folder, f"{new:04d}.png")) as temporary:
            shutil.copyfile(originals[row], temporary)
    return path


def checks(rows: dict) -> dict:
    """Per type, each mitigation's SSIM_Orig and D_Pix relative to all neurons active."""
    plain = rows[PLAIN]
    result = {}
    for kind in ("VM", "TM"):
        if kind not in plain["SSIM_Orig"]:
            continue
        ratio = lambda name, column: rows[name][column][kind]["median"] / plain[column][kind]["median"]
        result[kind] = {f"{name} {column} ratio": ratio(name, column) for name in rows if name != PLAIN
                        for column in ("SSIM_Orig", "D_Pix") if kind in rows[name][column]}
    return result


def checks_markdown(ratios: dict) -> str:
    """The checks as a table: a row per mitigation, SSIM_Orig and D_Pix relative to all neurons
    active, per memorization type."""
    kinds = list(ratios)
    names = list(dict.fromkeys(key.rsplit(" ", 2)[0] for kind in kinds for key in ratios[kind]))
    lines = ["\n### Each row against all neurons active (ratio of medians)", "",
             "| row | " + " | ".join(f"{kind} {column}" for kind in kinds for column in ("SSIM_Orig", "D_Pix")) + " |",
             "|---" * (1 + 2 * len(kinds)) + "|"]
    for name in names:
        cells = [ratios[kind].get(f"{name} {column} ratio") for kind in kinds for column in ("SSIM_Orig", "D_Pix")]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def folder_ssim(folder: str, originals: dict[int, str], measures: tables.Measures) -> dict[int, float]:
    """Per prompt the SSIM_Orig of a folder of generated images."""
    return {prompt: measures.orig(load_images([originals[prompt]])[0], load_images(paths), None)
            for prompt, paths in generated_images(folder).items()}


def planted_run_truth(bed: Bed, rows: list[int]) -> ground_truth.GroundTruth:
    """The bed's ground truth renumbered to the run's prompt file (``rows``: each prompt's row
    in the full file)."""
    truth = ground_truth.read_ground_truth(bed.ground_truth)
    return ground_truth.GroundTruth(truth.layers, truth.widths, *(
        {new: mapping[row] for new, row in enumerate(rows)} for mapping in (truth.neurons, truth.captions, truth.types)))


def write_truth_file(run_truth: ground_truth.GroundTruth, path: str) -> None:
    """The run's ground truth as a results file of script 3 (what scripts 4 and 8 deactivate)."""
    write_csv(ground_truth.results_frame(run_truth), path)


def planted_runs(truth_file: str, dataset: str, out: str, generation: dict) -> dict[str, dict]:
    """Script 4's settings with the ground truth (``truth_file``, a results file of script 3)
    deactivated, as many random neurons per layer, and NeMo's initial neurons, by name."""
    nemo_file = os.path.join(out, "memorization_statistics.csv")
    settings = {PLANTED_OFF: (truth_file, "refined_neurons"), PLANTED_RANDOM: (truth_file, "block_random_neurons"),
                "NeMo initial": (nemo_file, "initial_neurons")}
    return {name: dict(result_file=results, dataset=dataset, output=os.path.join(out, "images", folder_name(name)),
                       **generation, **{mode: True}) for name, (results, mode) in settings.items()}


def planted_generations(truth_file: str, out: str, generation: dict, ledger: plan.Ledger | None) -> dict[str, str]:
    """Script 4 for every setting of ``planted_runs`` (this process's share of each, each timed
    in ``ledger``); returns the image folders by name."""
    runs = planted_runs(truth_file, os.path.join(out, "memorized_prompts.csv"), out, generation)
    for name, values in runs.items():
        with plan.timed(ledger, plan.generation_step(name)):
            cli.run_step(generate, **values)
    return {name: values["output"] for name, values in runs.items()}


def planted_checks(report: dict, run_truth: ground_truth.GroundTruth, folders: dict[str, str], out: str,
                   measures: tables.Measures) -> tuple[dict, str]:
    """The planted bed's criteria and localization table from ``planted_generations``'
    ``folders``: the localization table compares NeMo's sets with the ground truth and says
    which sets stop the replication, Wanda's pruned model too (its ff.net.2 weights are not
    value neurons: no recall or precision). Returns the checks and their markdown.
    """
    nemo_file = os.path.join(out, "memorization_statistics.csv")
    originals = original_images(os.path.join(out, "originals"))
    ssim = {"plain": report["rows"][PLAIN]["per_prompt"]["SSIM_Orig"],
            "NeMo refined": report["rows"]["NeMo"]["per_prompt"]["SSIM_Orig"]}
    ssim.update({name: folder_ssim(folder, originals, measures) for name, folder in folders.items()})
    nemo = read_results(nemo_file, run_truth.widths)
    sets = {"NeMo initial": dict(enumerate(nemo["Initial Neurons"])), "NeMo refined": dict(enumerate(nemo["Refined Neurons"])),
            PLANTED_OFF: run_truth.neurons}
    localization = ground_truth.localization_rows(sets, run_truth, ssim)
    wanda = [row for row in (WANDA_ROW, WANDA_ROW + IN_P) if row in report["rows"]]
    if wanda and report.get("wanda"):  # its units are ff.net.2 weights: only their count and the stop compare
        name = f"Wanda ({report['wanda']['pruned_weights']} ff.net.2 weights)"
        ssim[name] = {int(p): v for row in wanda for p, v in report["rows"][row]["per_prompt"]["SSIM_Orig"].items()}
        localization += ground_truth.other_unit_rows(name, report["wanda"]["pruned_weights"], run_truth, ssim)
    lost = {prompt: ground_truth.lost_at(nemo["Initial Neurons"][prompt], nemo["Refined Neurons"][prompt], neurons)
            for prompt, neurons in run_truth.neurons.items()}
    ratio = lambda name, kind: (
        float(torch.tensor([ssim[name][p] for p in ssim[name] if run_truth.types[p] == kind]).median()) /
        float(torch.tensor([ssim["plain"][p] for p in ssim[name] if run_truth.types[p] == kind]).median()))
    kinds = sorted(set(run_truth.types.values()))
    criteria = {kind: {f"{name} SSIM_Orig ratio": ratio(name, kind) for name in (PLANTED_OFF, PLANTED_RANDOM)}
                for kind in kinds}
    text = ("\n## Planted bed: criteria and localization\n\n"
            + "\n".join(f"{kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()) for kind, c in criteria.items())
            + "\n\n" + ground_truth.markdown(localization)
            + "\nTrue neurons NeMo missed (layer, index), by the step that lost them: "
            + ("; ".join(f"prompt {p}: " + ", ".join(f"{step} {pairs}" for step, pairs in steps.items() if pairs)
                         for p, steps in lost.items() if any(steps.values())) or "none") + "\n")
    return dict(criteria=criteria, ssim=ssim, localization=localization, summary=ground_truth.summary(localization),
                lost=lost), text


def add_args(parser) -> None:
    parser.epilog = ("Prompt counts are ours, sized for the demo, and so are the test bed's Wanda sparsity (5%), "
                     "adversarial fine-tuning recipe (learning rate 1e-3, distillation weight 100, 64 utility pairs a "
                     "step; BENCHMARKS.md, testbed.tradeoff); every "
                     "other default is script 6's, whose --help names its sources.")
    parser.add_argument("--bed", choices=sorted(BEDS), default="natural",
                        help="natural: the test bed (testbed/model); planted: its fine-tuned copy whose planted prompts "
                             "replicate through known neurons (testbed/planted), with the localization table")
    parser.add_argument("--model", default=None, help="diffusers folder of the bed's model (default: the bed's)")
    parser.add_argument("--output", default=None, help="folder for every file the run writes (default: demo_output/<bed>)")
    parser.add_argument("--steps", type=cli.positive_int, default=GENERATION_STEPS, help="DDIM steps of the generations (paper: 50)")
    parser.add_argument("--num_samples", type=cli.positive_int, default=NUM_SAMPLES, help="images per prompt (paper: 10)")
    for kind in ("VM", "TM"):
        parser.add_argument(f"--{kind.lower()}", type=cli.non_negative_int, default=None,
                            help=f"how many {kind} prompts (default: the bed's demo count, " + ", ".join(
                                f"{name} {dict(bed.demo_prompts)[kind]}" for name, bed in BEDS.items())
                            + "; sized so that `make demo` runs both beds in under 15 minutes on 2 CPU cores)")
    parser.add_argument("--quality", type=cli.positive_int, default=DEMO_QUALITY_PROMPTS,
                        help="held-out ordinary prompts for the A_color and KID_pix columns (sized for the demo; "
                             "the bed has 25)")
    parser.add_argument("--unmemorized", type=cli.positive_int, default=DEMO_DETECTION_PROMPTS,
                        help="held-out prompts the detectors are compared on (sized for the demo; the bed has 25)")
    parser.add_argument("--rows", default=None, help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--plan", action="store_true",
                        help="print every step (the bed's statistics and tau_mem, then script 6's) with its units of "
                             "work and projected time on this machine, and the total; then exit, writing nothing "
                             "(script 6's --plan)")
    parser.add_argument("--dori", action="store_true",
                        help="also adversarial fine-tuning and the Dori attack on every mitigation (scripts 8, 9; "
                             "with 12 VM prompts the whole table takes 73 minutes on 2 CPU cores in two processes, "
                             "BENCHMARKS.md)")
    parser.add_argument("--dori_type", choices=ATTACK_TYPES, default=ATTACK_TYPE,
                        help="with --dori: the memorized prompts attacked and erased (script 6's default: VM, as the paper)")
    parser.add_argument("--memorization_threshold", type=cli.positive_float, default=None,
                        help="tau_mem of NeMo's localization (default: the bed's own, script 2 on its held-out prompts; "
                             "SD v1.4's is 0.428)")
    parser.add_argument("--finetune_epochs", type=cli.positive_int, default=None, help="script 9's epochs (default: the paper's 5)")
    parser.add_argument("--attack_steps", type=cli.positive_int, default=None, help="steps of every attack (default: the paper's 50)")
    parser.add_argument("--finetune_schedule", choices=SCHEDULES, default=SCHEDULE,
                        help="script 9's --schedule under a launcher: images (data-parallel over the memorized images, "
                             "a model of its own per number of processes) or single (one process's updates, each "
                             "batch split over the processes; ours, as script 6 and 9: utils/methods/dori)")
    cli.add_run_args(parser, resumable=False, limit=False)
    parser.set_defaults(log_level="WARNING")


def run(args) -> dict:
    """The bed's Table 1 for the flags of ``add_args``; returns the report (with --plan: the
    plan, writing nothing). Under a launcher the processes share every step
    (``experiments.table1.run``); rank 0 writes the inputs it makes."""
    bed = BEDS[args.bed]
    counts = {kind: getattr(args, kind.lower()) if getattr(args, kind.lower()) is not None else n
              for kind, n in bed.demo_prompts}
    if sum(counts.values()) == 0:
        raise ValueError("--vm 0 --tm 0: expected at least one memorized prompt")
    out = args.output = args.output or os.path.join("demo_output", args.bed)
    with distributed.process_group(torch.device("cpu")) as shard:
        if not args.plan:
            return run_bed(args, bed, counts, out, shard)
        with tempfile.TemporaryDirectory() as inputs:  # the run's inputs, written nowhere else
            run = bed_run(args, bed, counts, out, inputs)
            write_inputs(args, bed, run, inputs)  # each process its own: every process calibrates
            return {"plan": bed_plan(args, run, out, shard).report()}


@dataclass
class BedRun:
    """A bed's run: the model, its own steps' settings (statistics, tau_mem, planted
    generations), the table's configuration and the columns."""

    model: str
    statistics: dict
    threshold: dict | None  # script 2 on the held-out prompts; None: --memorization_threshold given
    config: object
    measures: tables.Measures
    rows: list[int]
    run_truth: ground_truth.GroundTruth | None
    truth_file: str | None
    generation: dict


def bed_run(args, bed: Bed, counts: dict[str, int], out: str, inputs: str) -> BedRun:
    """The settings of a bed's run whose derived inputs (prompt subsets, originals, ground
    truth) are in ``inputs``; the configuration's tau_mem is --memorization_threshold or, until
    script 2 has run, a stand-in (any value costs the same to plan)."""
    model = args.model or bed.model
    rows = subset_rows(counts, bed)
    run_truth = planted_run_truth(bed, rows) if bed.ground_truth else None
    threshold = None if args.memorization_threshold else dict(
        prompts=bed.unmemorized, output=os.path.join(out, "scores_unmemorized.csv"), resume=True, version=model,
        ssim_kernel_size=testbed.SSIM_KERNEL_SIZE)
    config = reproduce.config(
        dataset=os.path.join(inputs, "memorized_prompts.csv"), output=out,
        statistics=os.path.join(out, "statistics.pt"),
        memorization_threshold=args.memorization_threshold or nemo.MEMORIZATION_THRESHOLD,
        ssim_kernel_size=testbed.SSIM_KERNEL_SIZE, originals=os.path.join(inputs, "originals"),
        quality_prompts=os.path.join(inputs, "quality_prompts.csv"),
        unmemorized_prompts=os.path.join(inputs, "unmemorized_prompts.csv"), steps=args.steps,
        num_samples=args.num_samples, wanda_sparsity=WANDA_SPARSITY,
        wanda_subset_size=wanda_subset_size(sum(counts.values())), version=model, rows=args.rows, dori=args.dori,
        generation_option=[f"han_max_iterations={HAN_MAX_ITERATIONS}"])
    if args.dori:
        vars(config).update(
            utility_data=os.path.join(inputs, "utility_pairs", "pairs.csv"), attack_similarity="pixel_ssim",
            finetune_learning_rate=FINETUNE_LEARNING_RATE, finetune_distillation_weight=FINETUNE_DISTILLATION_WEIGHT,
            finetune_utility_batch=FINETUNE_UTILITY_BATCH, finetune_schedule=args.finetune_schedule,
            dori_type=args.dori_type)
    for name in ("finetune_epochs", "attack_steps"):
        if getattr(args, name):
            setattr(config, name, getattr(args, name))
    return BedRun(model, dict(prompts=bed.additional, output=os.path.join(out, "statistics.pt"), version=model),
                  threshold, config, testbed_measures(rows, bed.originals), rows, run_truth,
                  os.path.join(inputs, "ground_truth_neurons.csv") if run_truth else None,
                  dict(version=model, steps=args.steps, num_samples=args.num_samples, batch_size=args.num_samples))


def write_inputs(args, bed: Bed, run: BedRun, inputs: str) -> None:
    """The run's prompt files, training images, ground truth and (with --dori) utility pairs."""
    held_out = read_prompts(bed.unmemorized)
    write_csv(held_out[: args.quality], run.config.quality_prompts)
    write_csv(held_out[: args.unmemorized], run.config.unmemorized_prompts)
    write_subset(run.rows, inputs, bed)
    if run.run_truth:
        write_truth_file(run.run_truth, run.truth_file)
    if args.dori:
        write_ordinary_pairs(os.path.dirname(run.config.utility_data), UTILITY_PAIRS, SEED, SEED + 3)


def bed_steps(run: BedRun, out: str) -> tuple[list[plan.Step], list[plan.Step]]:
    """The bed's own steps before the table's (statistics, tau_mem) and after them (the planted
    bed's generations), with their work."""
    before = [plan.step_cost(STATISTICS_STEP, statistics, **run.statistics)]
    if run.threshold:
        before.append(plan.step_cost(THRESHOLD_STEP, detect, **run.threshold))
    after = [plan.step_cost(plan.generation_step(name), generate, **values) for name, values in
             planted_runs(run.truth_file, run.config.dataset, out, run.generation).items()] if run.run_truth else []
    return before, after


def bed_plan(args, run: BedRun, out: str, shard) -> plan.Ledger:
    """The calibrated plan of the bed's run (its inputs written), printed by rank 0."""
    before, after = bed_steps(run, out)
    steps = reproduce.plan_steps(run.config, chosen_rows(args.rows, args.dori),
                                 {PLANTED_OFF: run.truth_file} if run.truth_file else None, before, after)
    return plan.prepared(steps, run.config, run.measures, shard)


def run_bed(args, bed: Bed, counts: dict[str, int], out: str, shard: distributed.Shard) -> dict:
    reproduce.claim_table_folder(args, out, shard)  # a rerun continues every finished step; other settings are refused
    run = bed_run(args, bed, counts, out, out)
    if shard.rank == 0:
        write_inputs(args, bed, run, out)
    distributed.barrier(shard)
    ledger = bed_plan(args, run, out, shard)
    distributed.barrier(shard)  # every process's calibration is over
    with plan.timed(ledger, STATISTICS_STEP):
        cli.run_step(statistics, **run.statistics)
    if run.threshold:
        with plan.timed(ledger, THRESHOLD_STEP):
            cli.run_step(detect, **run.threshold)
    distributed.barrier(shard)
    threshold = run.config.memorization_threshold = (read_threshold(threshold_path(run.threshold["output"]))
                                                     if run.threshold else args.memorization_threshold)
    measures, run_truth, truth_file = run.measures, run.run_truth, run.truth_file

    def sections(report: dict, planted_folders: dict | None) -> str:
        """The test bed's checks, and on the planted bed its criteria and localization table."""
        report["checks"] = checks(report["rows"])
        text = ""
        if run_truth:
            report["planted"], text = planted_checks(report, run_truth, planted_folders, out, measures)
        return text + checks_markdown(report["checks"])

    title = ("Test-bed" if args.bed == "natural" else "Planted test-bed") + f" Table 1 (tau_mem = {threshold:.3f})"
    return reproduce.run(run.config, measures, title, claim=False,
                         attack_neuron_sets={PLANTED_OFF: truth_file} if truth_file else None,
                         steps=(lambda ledger: planted_generations(truth_file, out, run.generation, ledger))
                         if run_truth else None, sections=sections, ledger=ledger)


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    add_args(parser)
    return run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
