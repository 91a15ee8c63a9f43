"""Script 9's step: adversarial fine-tuning of the U-Net against Dori's attack, written as a
diffusers folder with its summary."""

from __future__ import annotations

import logging
import os
import time

from utils import cli, defaults
from utils.methods import dori

logger = logging.getLogger("9_adversarial_finetuning")
SUMMARY_NAME = "finetune.json"
CHECKPOINT_SUFFIX = ".checkpoint.pt"  # beside the output folder, until the model is complete


def add_args(parser) -> None:
    parser.epilog = ("Defaults: the Dori paper (5 epochs, the adversarial and the utility loss 1:1, the attack's Adam at "
                     "0.1 for 50 steps); the U-Net's optimizer and learning rate are not stated there: AdamW at 1e-5 "
                     "is our choice. README.md lists where this suite differs. Under a launcher (accelerate launch "
                     "--num_processes N, torchrun --nproc_per_node N) the processes train data-parallel (gradients "
                     "summed, every process holds the same weights after every update, checked); --schedule says "
                     "how the updates relate to one process's; rank 0 writes the checkpoint and the model folder.")
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv", help="memorized prompt file")
    parser.add_argument("--originals", required=True, help="training images to erase, one per prompt row")
    parser.add_argument("-f", "--result_file", required=True,
                        help="script 3 results: each prompt's NeMo neurons give its surrogate image")
    parser.add_argument("--utility_data", required=True,
                        help="';' CSV with columns Caption and Image (paths relative to it): pairs of the utility loss")
    parser.add_argument("-o", "--output", required=True, help="folder of the fine-tuned model")
    parser.add_argument("--memorization_type", choices=("VM", "TM"), default=None, help="only prompts of this type")
    parser.add_argument("--checkpoint_every", type=cli.non_negative_int, default=dori.CHECKPOINT_EVERY,
                        help="updates between checkpoints (<output>.checkpoint.pt: weights, optimizer and scaler "
                             "states, random generators, position; ours); a rerun of the same command continues from "
                             "the last one and ends with the weights an uninterrupted run ends with. 0: none")
    parser.add_argument("--epochs", type=cli.positive_int, default=dori.FINETUNE_EPOCHS, help="passes over the memorized images")
    parser.add_argument("--learning_rate", type=cli.positive_float, default=dori.FINETUNE_LEARNING_RATE,
                        help="AdamW learning rate of the U-Net (our choice)")
    parser.add_argument("--utility_batch", type=cli.positive_int, default=dori.UTILITY_BATCH, help="pairs of the utility loss a step")
    parser.add_argument("--utility_weight", type=cli.non_negative_float, default=dori.UTILITY_WEIGHT,
                        help="weight of the utility loss against the adversarial loss (paper §4.4: 1:1)")
    parser.add_argument("--empty_caption_share", type=cli.non_negative_float, default=dori.UTILITY_EMPTY_CAPTION_SHARE,
                        help="share of utility pairs trained with the empty caption, as in SD's training "
                             "(keeps the unconditional branch of guidance)")
    parser.add_argument("--distillation_weight", type=cli.non_negative_float, default=dori.DISTILLATION_WEIGHT,
                        help="weight of a distillation loss on the utility pairs towards the model before "
                             "fine-tuning (ours; 0: none)")
    parser.add_argument("--attack_steps", type=cli.positive_int, default=dori.ATTACK_STEPS, help="attack steps before each update")
    parser.add_argument("--attack_learning_rate", type=cli.positive_float, default=dori.ATTACK_LEARNING_RATE, help="attack's Adam")
    parser.add_argument("--attack_batch", type=cli.positive_int, default=dori.ATTACK_BATCH, help="noise samples per attack step")
    parser.add_argument("--seed", type=int, default=dori.ATTACK_SEED, help="seed of the noise, timesteps and pairs")
    parser.add_argument("--schedule", choices=dori.SCHEDULES, default=dori.SCHEDULE,
                        help="ours, for N processes under a launcher (one process: both are the single-process "
                             "schedule). images: data-parallel over the memorized images: an update takes N of them, "
                             "each process attacks one and adds its own utility pairs, and their gradients are "
                             "averaged: an epoch is ceil(M/N) AdamW steps of effective batch N where one process takes "
                             "M steps of one image each, so the same --learning_rate and --epochs move the weights less "
                             "(the number of processes is recorded: a rerun needs as many). single: one process's "
                             "schedule, one image an update; the processes split its attack's noise samples and its "
                             "utility pairs: the gradients are one process's up to float rounding (AdamW can turn it into "
                             "a step of up to the learning rate on a rare weight whose gradient is near zero), and only "
                             "the U-Net's work on --attack_batch and --utility_batch samples is divided over N")
    parser.add_argument("--surrogate_steps", type=cli.positive_int, default=defaults.GENERATION_STEPS,
                        help="DDIM steps of each NeMo-mitigated surrogate image (default: script 4's, SPEC §5; fewer "
                             "for a smoke run)")
    cli.add_model_args(parser, dtype_help="compute precision: the weights are trained and saved in float32, "
                                          "float16/bfloat16 run under autocast (mixed precision)")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute the U-Net's activations in the backward pass (less memory, more time)")
    cli.add_run_args(parser, resumable=False, what="memorized prompts (they change the model: recorded)")


def log_update(record: dict) -> None:
    """Progress of one update of ``adversarial_finetune`` (and the crash point the tests kill at)."""
    from utils.crashpoints import crash_point

    logger.info("epoch %d images %s: attack %.4f, adversarial %.4f, utility %.4f, %.1f s", record["epoch"],
                record["images"], record["attack_loss"], record["adversarial_loss"], record["utility_loss"],
                record["seconds"])
    crash_point("update_done")


def save_checkpoint(path: str, state: dict, recorded: dict) -> None:
    """The fine-tuning state and its settings record, each written atomically."""
    from utils.outputs import save_torch, write_settings

    save_torch(path, dict(state, seconds=sum(record["seconds"] for record in state["history"])))
    write_settings(path, recorded)


def cost(args):
    """Script 9's work for its flags (a ``utils.cost.Work``): nothing when --output is complete;
    else a surrogate image per memorized image (one latent, both halves), then --epochs updates
    per image, each an attack (--attack_steps passes of --attack_batch latents, backpropagated
    to the embedding) and one training step on the adversarial and utility batches (and the
    frozen copy's predictions with distillation). Timed in the run's --dtype; a continued run
    is projected from its start."""
    from utils.cost import BACKWARD, TRAIN, Passes, Work
    from utils.defaults import GUIDANCE_SCALE
    from utils.files import read_prompts, rows_of_type
    from utils.images import original_images

    if os.path.exists(os.path.join(args.output, SUMMARY_NAME)):
        return Work()
    originals = original_images(args.originals)
    prompts = len([i for i in rows_of_type(read_prompts(args.dataset), args.memorization_type, args.dataset)
                   if i in originals][: args.limit])
    updates = args.epochs * prompts
    passes = [Passes(prompts * args.surrogate_steps, 2 if GUIDANCE_SCALE > 1 else 1),
              Passes(updates * args.attack_steps, args.attack_batch, BACKWARD), Passes(updates, args.attack_batch, TRAIN),
              Passes(updates, args.utility_batch, TRAIN)]
    if args.distillation_weight > 0:
        passes += [Passes(updates, args.utility_batch, TRAIN), Passes(updates, args.utility_batch)]
    return Work(prompts, prompts, passes, attack_steps=updates * args.attack_steps, loads=1)


def run(args) -> dict:
    """Under a launcher the processes open their group, claim the output (rank 0 first), make
    their share of the surrogates and train data-parallel (``--schedule``); rank 0 writes."""
    from utils import distributed
    from utils.files import read_json, read_prompts, read_results
    from utils.models import resolve_device
    from utils.outputs import claim_output

    frame = read_prompts(args.dataset)
    read_results(args.result_file, None)
    # under "images" the number of processes sets the updates; under "single" any number continues a run
    processes = dict(processes=distributed.Shard.from_env().world_size) if args.schedule == "images" else {}
    recorded = cli.run_record(args, inputs=("dataset", "result_file", "utility_data"), limit=args.limit, **processes)
    with distributed.process_group(resolve_device(args.device)) as shard:
        with distributed.main_process_first(shard):  # rank 0 clears an --overwrite output first
            done = claim_output(args.output, recorded, args.overwrite, folder=True, record=False)
        if done:
            logger.info("%s is complete with the same settings; nothing to do", args.output)
            return read_json(os.path.join(args.output, SUMMARY_NAME), "fine-tuning summary")
        return finetune(args, frame, recorded, shard)


def finetune(args, frame, recorded: dict, shard) -> dict:
    import torch

    from utils import distributed
    from utils.files import read_results, require_neurons, rows_of_type
    from utils.images import original_images
    from utils.layers import layer_widths, value_layers
    from utils.methods.dori.finetuning import adversarial_finetune, surrogate_targets, utility_sampler
    from utils.methods.nemo.mitigation import with_neurons
    from utils.models import load_pipeline, resolve_device, resolve_dtype
    from utils.outputs import claim_output, remove_output, save_model_folder, write_json

    originals = original_images(args.originals)
    rows = [i for i in rows_of_type(frame, args.memorization_type, args.dataset) if i in originals][: args.limit]
    if not rows:
        raise ValueError(f"no prompt of {args.dataset} has an original image in {args.originals}")
    # fp32 weights on every device: they are trained and saved at full precision
    device = resolve_device(args.device)
    pipe = load_pipeline(args.version, device, torch.float32)
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    neurons = dict(enumerate(read_results(args.result_file, layer_widths(value_layers(pipe.unet)))["Refined Neurons"]))
    require_neurons(rows, neurons, args.result_file)
    utility = utility_sampler(pipe, args.utility_data, args.utility_batch, args.empty_caption_share)
    prompts = [(i, frame["Caption"][i], originals[i]) for i in rows]
    targets = surrogate_targets(pipe, with_neurons(pipe, neurons), prompts, steps=args.surrogate_steps,
                                seed=args.seed, shard=shard)  # surrogates: what the NeMo-mitigated model draws
    checkpoint = args.output.rstrip("/") + CHECKPOINT_SUFFIX
    resume = None
    with distributed.main_process_first(shard):  # rank 0 clears an --overwrite checkpoint first
        found = claim_output(checkpoint, recorded, args.overwrite and shard.rank == 0, record=False)
    if found:  # every process continues from it
        resume = torch.load(checkpoint, map_location=device, weights_only=False)
        logger.warning("%s: continuing after update %d", checkpoint, len(resume["history"]))
    start = time.perf_counter()
    history = adversarial_finetune(
        pipe, targets, utility, epochs=args.epochs, learning_rate=args.learning_rate, attack_steps=args.attack_steps,
        attack_learning_rate=args.attack_learning_rate, attack_batch=args.attack_batch, seed=args.seed,
        utility_weight=args.utility_weight, distillation_weight=args.distillation_weight,
        compute_dtype=resolve_dtype(args.dtype, device), progress=log_update, checkpoint_every=args.checkpoint_every,
        save_checkpoint=lambda state: save_checkpoint(checkpoint, state, recorded), resume=resume, shard=shard,
        schedule=args.schedule)
    seconds = time.perf_counter() - start + (resume["seconds"] if resume else 0.0)
    summary = dict(rows=rows, seconds=round(seconds, 1), updates=len(history), processes=shard.world_size,
                   schedule=args.schedule, history=history, settings=dict(vars(args)))
    if shard.rank == 0:
        save_model_folder(args.output, pipe, recorded, {SUMMARY_NAME: lambda path: write_json(path, summary)})
        remove_output(checkpoint)  # the model is complete
        print(f"fine-tuned on {len(rows)} memorized images, {args.epochs} epochs, {len(history)} updates in "
              f"{seconds:.1f} s with {shard.world_size} process(es), schedule {args.schedule} -> {args.output}")
    distributed.barrier(shard)  # the command ends when the folder exists
    return summary
