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
                     "wanda/wanda.py, wanda/save_union_over_time.py); README.md lists where this suite differs. "
                     "Under a launcher (accelerate launch --num_processes N, torchrun) P and the empty prompt are "
                     "split over the processes and their norms gathered and added in prompt order: the masks and the "
                     "pruned model are those of one process; rank 0 writes the folder.")
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


def cost(args):
    """Script 7's work for its flags (a ``utils.cost.Work``): nothing when --output is complete;
    else each prompt of P and the empty prompt, the first --calls U-Net calls of a generation
    (both halves with guidance above 1)."""
    from utils.cost import Passes, Work

    if os.path.exists(os.path.join(args.output, SUMMARY_NAME)):
        return Work()
    halves = 2 if args.guidance_scale > 1 else 1
    return Work(args.subset_size, passes=[Passes((args.subset_size + 1) * args.calls, halves)], loads=1)


def run(args) -> dict:
    """Under a launcher, each process collects the norms of its share of P (and of the empty
    prompt), every process adds all of them up in prompt order and computes the masks; rank 0 writes."""
    from utils import distributed
    from utils.files import read_json, read_prompts
    from utils.models import resolve_device
    from utils.outputs import claim_output

    prompts = read_prompts(args.dataset)
    recorded = cli.run_record(args, inputs=("dataset",))
    with distributed.process_group(resolve_device(args.device)) as shard:
        with distributed.main_process_first(shard):  # rank 0 clears an --overwrite output first
            done = claim_output(args.output, recorded, args.overwrite, folder=True, record=False)
        if done:
            logger.info("%s is complete with the same settings; nothing to do", args.output)
            return read_json(os.path.join(args.output, SUMMARY_NAME), "Wanda summary")
        return prune_on_subset(args, prompts, recorded, shard)


def prune_on_subset(args, prompts, recorded: dict, shard) -> dict:
    from utils import distributed
    from utils.methods.wanda import pruning as wanda
    from utils.models import load_pipeline_from_args
    from utils.outputs import save_model_folder, write_json

    rows = wanda.choose_subset(len(prompts), args.subset_size, args.subset_seed)
    captions = [prompts["Caption"][i] for i in rows]
    pipe = load_pipeline_from_args(args)
    start = time.perf_counter()
    settings = dict(seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale, calls=args.calls)
    # jobs: P, then the empty prompt; this process runs jobs rank, rank + N, ... and gets everyone's
    jobs = captions + [wanda.NULL_PROMPT]
    mine = shard.indices(len(jobs))
    parts = distributed.gather_by_index(shard, dict(zip(mine, wanda.prompt_input_norms(
        pipe, [jobs[i] for i in mine], **settings))))
    memorized = wanda.total([parts[i] for i in range(len(captions))])  # in prompt order: one process's bits
    # the empty prompt's runs are all alike (same seed): one run counted |P| times
    null = wanda.scale(parts[len(captions)], len(captions))
    masks = wanda.wanda_masks(pipe.unet, memorized, null, args.sparsity)
    seconds = time.perf_counter() - start
    summary = dict(dataset=args.dataset, rows=rows, captions=captions, sparsity=args.sparsity, calls=args.calls,
                   layers=masks.layers, pruned_fraction=masks.pruned_fraction(),
                   pruned_weights=int(sum(m.sum().item() for m in masks.union)),
                   ffn_weights=int(sum(m.numel() for m in masks.union)), seconds=round(seconds, 3),
                   unet_sample_forwards=memorized.unet_sample_forwards + null.unet_sample_forwards,
                   processes=shard.world_size, settings=dict(vars(args)))
    if shard.rank == 0:
        wanda.prune_weights(pipe.unet, masks)
        save_model_folder(args.output, pipe, recorded, {
            MASKS_NAME: lambda path: wanda.save_masks(masks, path, rows=rows, sparsity=args.sparsity),
            SUMMARY_NAME: lambda path: write_json(path, summary)})
        print(f"pruned {summary['pruned_weights']} of {summary['ffn_weights']} ff.net.2 weights "
              f"({100 * summary['pruned_weights'] / summary['ffn_weights']:.2f}%) from {len(rows)} prompts in "
              f"{seconds:.1f} s -> {args.output}")
    distributed.barrier(shard)  # the command ends when the folder exists
    return summary
