"""Script 6: the paper's Table 1, every row, on any model (SPEC §6; paper Table 1).

Runs, on a memorized prompt file: NeMo's localization (script 3, resumed), Wanda pruning
(script 7) on a random subset P of the prompts, then script 4 for every setting (all neurons
active, Wen's prompt-embedding adjustment, random neurons, Ren's attention scaling, 1/4/10
random tokens, NeMo, and beyond the paper's table the Wanda-pruned model on the prompts not in
P and on P, and NeMo on that model), optionally each global setting on held-out prompts for a
quality column, optionally both detectors (script 2: NeMo's SSIM score and Wen's noise
magnitude) on the memorized and a non-memorized prompt file, and with --dori adversarial
fine-tuning (script 9) as a row and the Dori attack (script 8) on every mitigation. Each image
is also compared with a whole reference set (nearest copies). Prints and writes the table
(table1.json, table1.md) and PNGs (a grid per memorization type, score histogram, neurons per
layer) into --output; a rerun reuses every finished step.

SD v1.4 with SSCD and CLIP weights (the paper's columns):
    python 6_reproduce_table1.py -d prompts/memorized_laion_prompts.csv --originals original_images \\
        --unmemorized_prompts prompts/unmemorized_laion_prompts.csv --sscd-model sscd_disc_mixup
"""

from __future__ import annotations

from utils import cli, defaults
from experiments.rows import SETTINGS


def add_args(parser) -> None:
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="memorized prompt file (';' CSV with columns Caption and type)")
    parser.add_argument("-o", "--output", default="results/table1", help="folder for every file the run writes")
    parser.add_argument("--statistics", default="statistics/statistics_additional_laion_prompts_v1_4.pt",
                        help="activation statistics for script 3 (script 1, or the authors' file)")
    parser.add_argument("--memorization_threshold", type=float, default=defaults.MEMORIZATION_THRESHOLD,
                        help="tau_mem for script 3 (script 2 on non-memorized prompts; paper: 0.428)")
    parser.add_argument("--ssim_kernel_size", type=cli.positive_int, default=defaults.SSIM_KERNEL_SIZE,
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
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated subset of the rows ({'; '.join(s.name for s in SETTINGS)}); "
                             "default: all")
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
    gen.add_argument("--wen_target_loss", type=cli.non_negative_float, default=None,
                     help="Wen's target loss (default: script 4's, the authors' 3 for 4 SD latents)")
    pruning = parser.add_argument_group("Wanda rows (script 7; defaults: ruchikachavhan/concept-prune)")
    pruning.add_argument("--wanda_sparsity", type=cli.fraction, default=defaults.WANDA_SPARSITY,
                         help="share of each ff.net.2 weight row pruned at most per call (skill_ratio)")
    pruning.add_argument("--wanda_subset_size", type=cli.positive_int, default=defaults.WANDA_SUBSET_SIZE, help="|P|, prompts pruned on")
    pruning.add_argument("--wanda_subset_seed", type=int, default=defaults.WANDA_SUBSET_SEED, help="seed of the draw of P")
    attack = parser.add_argument_group("--dori: the attack on every mitigation and adversarial fine-tuning "
                                       "(scripts 8 and 9; defaults: the Dori paper)")
    attack.add_argument("--dori", action="store_true",
                        help="add the adversarial fine-tuning row and a table of the attack's success rate per "
                             "mitigation (needs --originals and --utility_data)")
    attack.add_argument("--utility_data", default=None,
                        help="';' CSV with columns Caption and Image: pairs of fine-tuning's utility loss")
    attack.add_argument("--dori_type", choices=defaults.ATTACK_TYPES, default=defaults.ATTACK_TYPE,
                        help="memorized prompts attacked and erased (the paper reports VM)")
    attack.add_argument("--attack_similarity", choices=("sscd", "pixel_ssim"), default="sscd",
                        help="replication measure of script 8 (SSCD > 0.7: the paper's)")
    attack.add_argument("--attack_steps", type=cli.positive_int, default=defaults.ATTACK_STEPS, help="steps of every attack")
    attack.add_argument("--finetune_epochs", type=cli.positive_int, default=defaults.FINETUNE_EPOCHS, help="script 9's epochs")
    attack.add_argument("--finetune_learning_rate", type=cli.positive_float, default=defaults.FINETUNE_LEARNING_RATE,
                        help="script 9's U-Net learning rate")
    attack.add_argument("--finetune_utility_batch", type=cli.positive_int, default=defaults.UTILITY_BATCH,
                        help="script 9's utility pairs a step (ours)")
    attack.add_argument("--finetune_utility_weight", type=float, default=defaults.UTILITY_WEIGHT,
                        help="script 9's weight of the utility loss (paper: 1:1)")
    attack.add_argument("--finetune_empty_caption_share", type=float, default=defaults.UTILITY_EMPTY_CAPTION_SHARE,
                        help="script 9's share of utility pairs with the empty caption")
    attack.add_argument("--finetune_distillation_weight", type=float, default=defaults.DISTILLATION_WEIGHT,
                        help="script 9's weight of the distillation loss towards the model before fine-tuning")
    metric = parser.add_argument_group("columns (SPEC §6)")
    metric.add_argument("--embedder", choices=("sscd", "pixel"), default="sscd",
                        help="SSCD (the paper's) or the weight-free pixel stand-in for *_Orig, *_Gen, D_*")
    cli.add_sscd_model_arg(metric)
    metric.add_argument("--clip-model", default=defaults.CLIP_MODEL, help="CLIP ViT-B/32 for A_CLIP; 'none' to leave it out")
    cli.add_model_args(parser)
    cli.add_run_args(parser, resumable=False, what="memorized prompts")
    parser.set_defaults(log_level="WARNING")


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    add_args(parser)
    args = cli.parse(parser, argv)

    from experiments import table1 as reproduce

    return reproduce.reproduce(args, reproduce.paper_measures(args), f"Table 1 ({args.version})")


if __name__ == "__main__":
    cli.run(main)
