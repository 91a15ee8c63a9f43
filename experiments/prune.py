"""Script 7's step: Wanda's pruned model of a memorized prompt file's subset P (Chavhan et al.),
written as a diffusers folder with its masks and summary."""

from __future__ import annotations

import logging
import os
import time

from utils import cli, defaults
from utils.methods import wanda

logger = logging.getLogger("7_prune_memorized_weights")
MASKS_NAME = "wanda_masks.pt"
SUMMARY_NAME = "wanda.json"


def add_args(parser) -> None:
    parser.epilog = ("Defaults are those of the authors' code (ruchikachavhan/concept-prune: configs/wanda_config.yaml, "
                     "wanda/wanda.py, wanda/save_union_over_time.py); README.md lists where this suite differs.")
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="memorized prompt file (';' CSV, column Caption)")
    parser.add_argument("-o", "--output", required=True, help="ours: folder of the pruned model (it appears only once complete)")
    parser.add_argument("--subset_size", type=cli.positive_int, default=wanda.WANDA_SUBSET_SIZE,
                        help="|P|, prompts the masks are computed from (datasets/memorize_*.txt hold 10)")
    parser.add_argument("--subset_seed", type=int, default=wanda.WANDA_SUBSET_SEED, help="seed of the draw of P")
    parser.add_argument("--sparsity", type=cli.fraction, default=wanda.WANDA_SPARSITY,
                        help="share of each weight row in the top by score (skill_ratio)")
    parser.add_argument("--calls", type=cli.positive_int, default=wanda.WANDA_PRUNED_CALLS,
                        help="masks of the first N U-Net calls are united (save_union_over_time.py --timesteps)")
    parser.add_argument("--seed", type=int, default=wanda.WANDA_COLLECTION_SEED, help="seed of every prompt's latents")
    parser.add_argument("--steps", type=cli.positive_int, default=wanda.WANDA_COLLECTION_STEPS, help="PNDM schedule length")
    parser.add_argument("--guidance_scale", type=cli.non_negative_float, default=wanda.WANDA_COLLECTION_GUIDANCE,
                        help="classifier-free guidance of the collection runs (both halves are collected)")
    cli.add_model_args(parser, default_dtype=defaults.SAVED_DTYPE,
                       dtype_help="precision the activations are collected in and the pruned folder is written in")
    cli.add_run_args(parser, resumable=False, limit=False)


def run(args) -> dict:

    from utils.files import read_json, read_prompts
    from utils.outputs import claim_output, save_model_folder, write_json

    prompts = read_prompts(args.dataset)
    recorded = cli.run_record(args, inputs=("dataset",))
    if claim_output(args.output, recorded, args.overwrite, folder=True, record=False):
        logger.info("%s is complete with the same settings; nothing to do", args.output)
        return read_json(os.path.join(args.output, SUMMARY_NAME), "Wanda summary")

    import torch

    from utils.methods.wanda import pruning as wanda
    from utils.models import load_pipeline_from_args

    rows = wanda.choose_subset(len(prompts), args.subset_size, args.subset_seed)
    captions = [prompts["Caption"][i] for i in rows]
    pipe = load_pipeline_from_args(args)
    start = time.perf_counter()
    settings = dict(seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale, calls=args.calls)
    memorized = wanda.input_norms(pipe, captions, **settings)
    # the empty prompt's runs are all alike (same seed): one run counted |P| times
    null = wanda.scale(wanda.input_norms(pipe, [wanda.NULL_PROMPT], **settings), len(captions))
    masks = wanda.wanda_masks(pipe.unet, memorized, null, args.sparsity)
    seconds = time.perf_counter() - start
    wanda.prune_weights(pipe.unet, masks)
    summary = dict(dataset=args.dataset, rows=rows, captions=captions, sparsity=args.sparsity, calls=args.calls,
                   layers=masks.layers, pruned_fraction=masks.pruned_fraction(),
                   pruned_weights=int(sum(m.sum().item() for m in masks.union)),
                   ffn_weights=int(sum(m.numel() for m in masks.union)), seconds=round(seconds, 3),
                   unet_sample_forwards=memorized.unet_sample_forwards + null.unet_sample_forwards,
                   settings=dict(vars(args)))
    save_model_folder(args.output, pipe, recorded, {
        MASKS_NAME: lambda path: wanda.save_masks(masks, path, rows=rows, sparsity=args.sparsity),
        SUMMARY_NAME: lambda path: write_json(path, summary)})
    print(f"pruned {summary['pruned_weights']} of {summary['ffn_weights']} ff.net.2 weights "
          f"({100 * summary['pruned_weights'] / summary['ffn_weights']:.2f}%) from {len(rows)} prompts in "
          f"{seconds:.1f} s -> {args.output}")
    return summary
