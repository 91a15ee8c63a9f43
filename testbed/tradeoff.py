"""The trade-off of adversarial fine-tuning on the test bed: the attack's success against utility.

Sweeps one recipe knob of script 9 (a fine-tuned model per value) on the test bed's first --vm
VM prompts, and measures for each model and for the reference mitigations (the unmodified
model, NeMo's refined neurons off, Wanda's pruned model) the Dori attack's success rate on
those prompts (script 8, pixel SSIM) and the utility on held-out ordinary prompts (script 4:
A_color, its mean over prompts, and KID_pix of metrics/pixel_quality.py). Writes tradeoff.json
and tradeoff.png, one point per setting, into --output; a rerun reuses every finished step.

    python -m testbed.tradeoff --knob distillation_weight --values 0,10,100 --output /tmp/tradeoff
"""

from __future__ import annotations

import os

import testbed
from experiments import attack, finetune, generate, localize, prune
from utils import cli
from utils.defaults import GENERATION_STEPS, NUM_SAMPLES
from utils.methods.dori import ATTACK_STEPS, FINETUNE_EPOCHS

KNOBS = ("distillation_weight", "utility_weight", "empty_caption_share", "epochs", "learning_rate", "utility_batch")
# The utility measures a point records, as the figure's axes name them. A_color: the median over
# prompts of each prompt's aligned share (script 6's column); its mean: the share of all images,
# less coarse with a few images a prompt.
UTILITY_LABELS = {"A_color": "A_color (median)", "A_color_mean": "A_color (mean)",
                  "KID_pix": "KID_pix (lower is better)"}
# Held-out images per prompt of the utility measures (ours): at 4 a prompt (40 images) the
# unmodified model's KID_pix spans 8.1-13.7 and its median A_color 0.25-0.50 over 4 generation
# seeds, more than the 10% a recipe may cost (BENCHMARKS.md).
QUALITY_SAMPLES = 16
FLAGS_NAME = "tradeoff_flags.json"  # script 9's flags a model was made with, beside finetune.json


def measure(args, name: str, model: str, results: str, prompts: str, quality: str, generation: dict,
            neurons_from: str | None = None) -> dict:
    """Held-out A_color and KID_pix (script 4 with ``generation``) and the attack's success
    (script 8, on ``neurons_from``'s refined neurons off if given) of one model."""
    from experiments import tables
    from testbed.alignment import alignment
    from testbed.table1 import kid_to_renders
    from utils.files import read_prompts

    folder = os.path.join(args.output, "points", name)
    images = os.path.join(folder, f"quality_{args.quality_samples}")
    cli.run_step(generate, result_file=results, prompts=quality, output=images, version=model, steps=args.steps,
             num_samples=args.quality_samples, batch_size=args.quality_samples, **generation)
    measures = tables.Measures("", "", "", None, None, align_name="A_color", align=alignment,
                               quality_name="KID_pix", image_quality=kid_to_renders)
    captions = dict(enumerate(read_prompts(quality)["Caption"]))
    attacked = cli.run_step(attack, version=model, dataset=prompts, originals=os.path.join(args.output, "originals"),
                        resume=True, output=os.path.join(folder, "attack"), similarity="pixel_ssim",
                        attack_steps=args.attack_steps, steps=args.steps, num_samples=args.num_samples,
                        neurons_from=neurons_from)["overall"]
    alignment_summary = tables.quality_score(images, captions, measures)["overall"]
    return dict(A_color=alignment_summary["median"], A_color_mean=alignment_summary["mean"],
                KID_pix=tables.image_quality_score(images, captions, measures)["overall"]["mean"],
                success=attacked["replicated_after"], replicated_before=attacked["replicated_before"])


def finetuned(args, value: str, prompts: str, results: str, pairs: str) -> tuple[str, dict]:
    """Script 9's model with ``--KNOB value`` and the recipe (made once; made again when its flags change)."""
    from metrics.cli import write_json
    from testbed.table1 import FINETUNE_DISTILLATION_WEIGHT, FINETUNE_LEARNING_RATE, FINETUNE_UTILITY_BATCH
    from utils.files import read_json

    folder = os.path.join(args.output, "finetuned", f"{args.knob}_{value}")
    flags = {"--learning_rate": str(FINETUNE_LEARNING_RATE), "--distillation_weight": str(FINETUNE_DISTILLATION_WEIGHT),
             "--utility_batch": str(FINETUNE_UTILITY_BATCH), "--epochs": str(args.epochs),
             "--attack_steps": str(args.attack_steps), **args.recipe, f"--{args.knob}": value}
    made_with = os.path.join(folder, FLAGS_NAME)
    if os.path.exists(made_with) and read_json(made_with, "fine-tuning flags") == flags:
        return folder, read_json(os.path.join(folder, finetune.SUMMARY_NAME), "fine-tuning summary")
    options = cli.step_args(finetune.add_args, [item for pair in flags.items() for item in pair], version=args.model,
                            dataset=prompts, originals=os.path.join(args.output, "originals"), result_file=results,
                            utility_data=pairs, output=folder)
    summary = finetune.run(options)
    write_json(made_with, flags)
    return folder, summary


def add_args(parser) -> None:
    parser.epilog = ("Every knob not swept is the test-bed Table 1's recipe (testbed.table1: learning rate, "
                     "distillation weight, utility batch), else script 9's default (its --help names the sources); "
                     "prompt counts are ours, sized for 2 CPU cores.")
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="diffusers folder of the test bed")
    parser.add_argument("--output", default="tradeoff_output", help="folder for every file the run writes")
    parser.add_argument("--knob", choices=KNOBS, default="distillation_weight", help="script 9's flag that is swept")
    parser.add_argument("--values", required=True, help="comma-separated values of the knob, one model each")
    parser.add_argument("--recipe", default="",
                        help="further script 9 flags for every model, comma-separated NAME=VALUE (e.g. utility_batch=8)")
    parser.add_argument("--utility", default="KID_pix,A_color_mean",
                        help="comma-separated utility measures, a panel each in the figure: " + ", ".join(UTILITY_LABELS)
                        + " (A_color: the median over prompts, as script 6; A_color_mean: the share of all held-out "
                        "images aligned)")
    parser.add_argument("--vm", type=cli.positive_int, default=12, help="VM prompts attacked and erased (of 12)")
    parser.add_argument("--quality", type=cli.positive_int, default=10,
                        help="held-out ordinary prompts of the utility (of 25; 10 as in the full test-bed Table 1)")
    parser.add_argument("--epochs", type=cli.positive_int, default=FINETUNE_EPOCHS, help="script 9's epochs (paper: 5)")
    parser.add_argument("--attack_steps", type=cli.positive_int, default=ATTACK_STEPS,
                        help="steps of every attack (paper: 50)")
    parser.add_argument("--steps", type=cli.positive_int, default=GENERATION_STEPS, help="DDIM steps (paper: 50)")
    parser.add_argument("--num_samples", type=cli.positive_int, default=NUM_SAMPLES,
                        help="images per memorized prompt before and after each attack (paper: 10)")
    parser.add_argument("--quality_samples", type=cli.positive_int, default=QUALITY_SAMPLES,
                        help="images per held-out prompt of the utility (ours: at 4, the unmodified model's KID_pix "
                             "spans 8.1-13.7 over 4 seeds; BENCHMARKS.md)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")


def run(args) -> dict:
    """The sweep and its references for the flags of ``add_args``; returns the report."""
    recipe = [item.split("=", 1) for item in args.recipe.split(",") if item.strip()]
    if any(len(item) != 2 for item in recipe):
        raise ValueError(f"--recipe: expected comma-separated NAME=VALUE, got {args.recipe!r}")
    args.recipe = {f"--{name.strip()}": value.strip() for name, value in recipe}
    for shadowed in (f"--{args.knob}", "--epochs"):  # the swept value and --epochs would be silently overridden
        if shadowed in args.recipe:
            raise ValueError(f"--recipe: {shadowed[2:]} is set by {'--values' if shadowed[2:] == args.knob else shadowed}, "
                             "not by the recipe")
    args.utility = [measure.strip() for measure in args.utility.split(",") if measure.strip()]
    if not args.utility or not set(args.utility) <= set(UTILITY_LABELS):
        raise ValueError(f"--utility: expected comma-separated measures of {', '.join(UTILITY_LABELS)}, "
                         f"got {','.join(args.utility)!r}")
    values = [v.strip() for v in args.values.split(",") if v.strip()]
    if not values:
        raise ValueError("--values: expected at least one value")

    from metrics import plots
    from metrics.cli import write_json
    from testbed.synthetic_data import write_ordinary_pairs
    from testbed.table1 import BEDS, SEED, UTILITY_PAIRS, WANDA_SPARSITY, subset_rows, wanda_subset_size, write_subset
    from utils.files import read_prompts, read_results, read_threshold
    from utils.methods.nemo import selection

    os.makedirs(args.output, exist_ok=True)
    prompts = write_subset(subset_rows({"VM": args.vm}, BEDS["natural"]), args.output, BEDS["natural"])
    quality = os.path.join(args.output, "quality_prompts.csv")
    read_prompts(testbed.UNMEMORIZED_PROMPTS)[: args.quality].to_csv(quality, sep=";")
    pairs = write_ordinary_pairs(os.path.join(args.output, "utility_pairs"), UTILITY_PAIRS, SEED, SEED + 3)
    results = os.path.join(args.output, "memorization_statistics.csv")
    cli.run_step(localize, version=args.model, dataset=prompts, output=results, resume=True,
             statistics=os.path.join(testbed.TESTBED_DIR, "statistics.pt"),
             memorization_threshold=read_threshold(os.path.join(testbed.TESTBED_DIR, "threshold.json")),
             ssim_kernel_size=testbed.SSIM_KERNEL_SIZE)
    refined = list(read_results(results, None)["Refined Neurons"])
    report = dict(knob=args.knob, recipe=args.recipe, sweep={}, references={},
                  figure=os.path.join(args.output, "tradeoff.png"))

    def record(group: str, name: str, point: dict) -> None:
        """Add a point; the JSON and the figure are rewritten after every point, so a killed
        run leaves what it measured."""
        report[group][name] = point
        print(f"{name}: attack success {point['success']:.2f}, A_color {point['A_color']:.2f} "
              f"(mean {point['A_color_mean']:.3f}), KID_pix {point['KID_pix']:.2f}", flush=True)
        plots.tradeoff({args.knob: [(float(v), p, p["success"]) for v, p in report["sweep"].items()]}
                       if report["sweep"] else {},
                       {name: (p, p["success"]) for name, p in report["references"].items()},
                       {measure: f"{UTILITY_LABELS[measure]} on {args.quality} held-out prompts" for measure in args.utility},
                       report["figure"])
        write_json(os.path.join(args.output, "tradeoff.json"), report)

    record("references", "unmodified", measure(args, "unmodified", args.model, results, prompts, quality, {}))
    for value in values:  # the sweep before the other references: it is what the run is for
        model, summary = finetuned(args, value, prompts, results, pairs)
        record("sweep", value, dict(measure(args, f"{args.knob}_{value}", model, results, prompts, quality, {}),
                                    seconds=summary["seconds"]))
    record("references", "NeMo", measure(args, "nemo", args.model, results, prompts, quality,
                                         {"block_top_k_neurons": len(selection.neuron_frequencies(refined))},
                                         neurons_from=results))
    wanda = os.path.join(args.output, "wanda_model")
    if not os.path.exists(os.path.join(wanda, "wanda.json")):
        cli.run_step(prune, version=args.model, dataset=prompts, output=wanda, sparsity=WANDA_SPARSITY,
                 subset_size=wanda_subset_size(args.vm))
    record("references", "Wanda", measure(args, "wanda", wanda, results, prompts, quality, {}))
    return report


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    add_args(parser)
    return run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
