"""Script 8's step: the Dori attack on every memorized prompt of a mitigated model, and the
replication before and after it."""

from __future__ import annotations

import logging
import os

from utils import cli, defaults
from utils.methods import dori

logger = logging.getLogger("8_attack_mitigation")
COLUMNS = ["Caption", "type", "Similarity Before", "Similarity After", "Replicated Before", "Replicated After",
           "L2", "Cosine", "Final Loss", "Seconds"]
SUMMARY_NAME = "attack_summary.json"


def summarize_attack(frame) -> dict:
    """Success rate (share of prompts replicated) before and after the attack, per type."""
    from metrics.core import OVERALL

    groups = {OVERALL: frame}
    if "type" in frame:
        groups.update({kind: frame[frame["type"] == kind] for kind in sorted(set(frame["type"])) if kind})
    return {group: dict(prompts=len(rows), replicated_before=float(rows["Replicated Before"].astype(bool).mean()),
                        replicated_after=float(rows["Replicated After"].astype(bool).mean()),
                        median_l2=float(rows["L2"].median()), median_cosine=float(rows["Cosine"].median()),
                        median_similarity_before=float(rows["Similarity Before"].median()),
                        median_similarity_after=float(rows["Similarity After"].median()))
            for group, rows in groups.items() if len(rows)}


def add_args(parser) -> None:
    parser.epilog = ("Attack defaults are the Dori paper's (Adam, lr 0.1, 50 steps, 8 noise samples a step; SSCD > 0.7 "
                     "replicates); generation defaults are script 4's. README.md lists where this suite differs.")
    parser.add_argument("-d", "--dataset", default="prompts/memorized_laion_prompts.csv",
                        help="memorized prompt file (';' CSV, columns Caption and optionally type)")
    parser.add_argument("--originals", required=True, help="training images, one per prompt row (0000.png / 0000_x.jpg)")
    parser.add_argument("--neurons_from", default=None,
                        help="script 3 results: attack the model with each prompt's refined neurons deactivated (NeMo)")
    parser.add_argument("-o", "--output", default="results/attack", help="folder of attack.csv, embeddings and images")
    parser.add_argument("--memorization_type", choices=("VM", "TM"), default=None, help="only prompts of this type")
    attack = parser.add_argument_group("attack (Dori paper)")
    attack.add_argument("--attack_steps", type=cli.positive_int, default=dori.ATTACK_STEPS, help="Adam steps")
    attack.add_argument("--attack_learning_rate", type=cli.positive_float, default=dori.ATTACK_LEARNING_RATE, help="Adam learning rate")
    attack.add_argument("--attack_batch", type=cli.positive_int, default=dori.ATTACK_BATCH, help="noise samples per step")
    attack.add_argument("--attack_seed", type=int, default=dori.ATTACK_SEED,
                        help="seed of the attack's noise and timesteps (our choice)")
    generation = parser.add_argument_group("generation from the adversarial embedding (script 4's defaults)")
    generation.add_argument("-n", "--num_samples", type=cli.positive_int, default=defaults.NUM_SAMPLES, help="images per prompt")
    generation.add_argument("--steps", type=cli.positive_int, default=defaults.GENERATION_STEPS, help="DDIM steps")
    generation.add_argument("-g", "--guidance_scale", type=cli.non_negative_float, default=defaults.GUIDANCE_SCALE, help="guidance")
    generation.add_argument("-s", "--seed", type=int, default=defaults.GENERATION_SEED, help="seed of each prompt's latents")
    cli.add_replication_args(parser)
    cli.add_model_args(parser)
    cli.add_run_args(parser, what="prompts with an original image")


def nemo_neurons(pipe, path: str | None, rows: list[int]) -> dict:
    """Each row's refined neurons from script 3's results at ``path``; none without ``path``.
    Every row must have some: a prompt is never attacked unmitigated under NeMo's name."""
    from utils.files import read_results, require_neurons
    from utils.layers import layer_widths, value_layers

    if not path:
        return {}
    neurons = dict(enumerate(read_results(path, layer_widths(value_layers(pipe.unet)))["Refined Neurons"]))
    require_neurons(rows, neurons, path)
    return neurons


def attack_row(caption: str, kind: str, outcome, threshold: float) -> dict:
    """attack.csv's row of one attacked prompt (an ``AttackOutcome``)."""
    before, after = outcome.similarity_before, outcome.similarity_after
    return {"Caption": caption, "type": kind, "Similarity Before": round(before, 4), "Similarity After": round(after, 4),
            "Replicated Before": int(before > threshold), "Replicated After": int(after > threshold),
            "L2": round(outcome.l2, 4), "Cosine": round(outcome.cosine, 4),
            "Final Loss": round(outcome.losses[-1], 5), "Seconds": round(outcome.seconds, 2)}


def print_summary(args, summary: dict, threshold: float) -> None:
    """The success rates of ``summarize_attack``, a line per type."""
    print(f"attack on {args.version}{' with NeMo neurons off' if args.neurons_from else ''} "
          f"({args.similarity} > {threshold}):")
    for group, figures in summary.items():
        print(f"  {group:<8} {figures['prompts']:>3} prompts: replicated {figures['replicated_before']:.2f} before, "
              f"{figures['replicated_after']:.2f} after the attack; median L2 {figures['median_l2']:.2f}, "
              f"cosine {figures['median_cosine']:.3f} to the prompt's embedding")


def cost(args):
    """Script 8's work for its flags (a ``utils.cost.Work``): every prompt with an original up
    to --limit that attack.csv does not hold yet, its images generated before and after the
    attack (both halves with guidance above 1) and --attack_steps passes of --attack_batch
    latents, backpropagated to the embedding."""
    from utils.cost import BACKWARD, Passes, Work
    from utils.files import read_prompts, rows_of_type, written_rows
    from utils.images import original_images

    originals = original_images(args.originals)
    rows = [i for i in rows_of_type(read_prompts(args.dataset), args.memorization_type, args.dataset)
            if i in originals][: args.limit]
    pending = len(set(rows) - set(written_rows(os.path.join(args.output, "attack.csv")).index))
    latents = args.num_samples * (2 if args.guidance_scale > 1 else 1)
    return Work(pending, 2 * pending * args.num_samples,
                [Passes(2 * pending * args.steps, latents), Passes(pending * args.attack_steps, args.attack_batch, BACKWARD)],
                attack_steps=pending * args.attack_steps, loads=1)


def run(args) -> dict:
    threshold = cli.replication_threshold(args)

    from tqdm import tqdm

    from metrics.copies import similarity_to_original
    from utils.distributed import Shard
    from utils.files import RowWriter, merge_rows, read_csv, read_prompts, rows_of_type
    from utils.generation import generation_latents, image_path
    from utils.images import load_images, original_images
    from utils.methods.dori.attack import attack_prompt
    from utils.methods.nemo.mitigation import with_neurons
    from utils.models import load_pipeline_from_args
    from utils.outputs import save_image, save_torch, write_json

    frame = read_prompts(args.dataset)
    originals = original_images(args.originals)
    rows = [i for i in rows_of_type(frame, args.memorization_type, args.dataset) if i in originals]
    if not rows:
        raise ValueError(f"no prompt of {args.dataset} has an original image in {args.originals}")
    pipe = load_pipeline_from_args(args)
    similarity = similarity_to_original(args.similarity, pipe.device, args.sscd_model)
    prepare = with_neurons(pipe, nemo_neurons(pipe, args.neurons_from, rows[: args.limit]))
    latents = generation_latents(pipe.unet, args.seed, args.num_samples)  # [n, 4, h, w]
    images_dir = os.path.join(args.output, "images")
    embeddings_dir = os.path.join(args.output, "embeddings")
    shard = Shard.from_env()
    output = os.path.join(args.output, "attack.csv")
    recorded = cli.run_record(args, inputs=("dataset", "neurons_from"), threshold=threshold)
    # every input is checked: only now is the output touched (an earlier run's is continued or refused)
    with RowWriter(shard.part(output), COLUMNS, recorded, args.overwrite,
                   companions=(images_dir, embeddings_dir, os.path.join(args.output, SUMMARY_NAME))) as writer:
        pending = [i for i in rows[: args.limit][shard.rank::shard.world_size] if i not in writer.done]
        for i in tqdm(pending, desc="attacking", unit="prompt"):
            caption = frame["Caption"][i]
            condition = prepare(i, caption, latents)  # the prompt's embedding and its NeMo neurons, if any
            outcome = attack_prompt(pipe, load_images([originals[i]])[0], condition, latents, similarity,
                                    steps=args.attack_steps, learning_rate=args.attack_learning_rate,
                                    batch=args.attack_batch, seed=args.attack_seed, generation_steps=args.steps,
                                    guidance_scale=args.guidance_scale)
            for j, image in enumerate(outcome.images):
                save_image(image_path(images_dir, i, j), image)
            save_torch(os.path.join(embeddings_dir, f"{i:04d}.pt"), outcome.embedding.cpu())
            writer.write(i, attack_row(caption, frame["type"][i] if "type" in frame else "", outcome, threshold))
    if not shard.finish(output, merge_rows):
        return {}
    summary = summarize_attack(read_csv(output, tuple(COLUMNS), "attack file"))
    write_json(os.path.join(args.output, SUMMARY_NAME), dict(summary=summary, threshold=threshold,
                                                            similarity=args.similarity, model=args.version,
                                                            nemo_neurons=args.neurons_from))
    print_summary(args, summary, threshold)
    return summary
