"""Is memorization local? The analyses the NeMo, Wanda and Dori papers argue about, each a
command that writes JSON and a PNG.

``wanda-overlap`` (Chavhan et al., Fig. 2): Wanda's memorized weights found from disjoint
subsets of the memorized prompts, and their intersection over union per layer. A high IoU
says one subspace serves many prompts. With ``--unmemorized`` the same masks are also
compared with masks found from non-memorized prompts, the level an IoU must beat.

``agreement`` (NeMo vs Wanda on the same prompts): a NeMo neuron (an output feature of a
value layer) and a Wanda weight (an entry of an ``ff.net.2``) sit in different layers, so
their units cannot overlap; what can is what they do. From a Table-1 run (script 6) with NeMo,
the Wanda-pruned model and NeMo on that model, per prompt with SSIM/SSCD to the original S:
NeMo's mitigation left on the pruned model, (S_Wanda - S_both) / (S_plain - S_NeMo), and
Wanda's left with NeMo's neurons off, (S_NeMo - S_both) / (S_plain - S_Wanda). Near 0: the
other method already removed the same memorization; near 1: they act on different parts.

``triggers`` (Kowalczuk et al., "Finding Dori"): several adversarial embeddings for one
training image, from random starts; the distances between those that replicate it against
the distances between the embeddings of different prompts ("triggers are scattered"), the
value-layer activations they cause against those of different memorized prompts
("divergent activations"), and, with --statistics, NeMo's neurons for each trigger and their
overlap per layer.
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import torch

from experiments.rows import IN_P, PLAIN
from metrics.cli import write_json
from metrics.copies import similarity_to_original
from metrics.core import summarize
from metrics.plots import new_axis, save_figure
from utils import cli
from utils.cli import fraction, non_negative_int, positive_int
from utils.diffusion import encode_prompts, latent_shape
from utils.files import read_json, read_prompts
from utils.generation import PromptCondition, generate_prompt_images, generation_latents
from utils.images import load_images, original_images
from utils.layers import value_layers
from utils.methods.dori import ATTACK_STEPS, attack as dori
from utils.methods.nemo import MEMORIZATION_THRESHOLD, SSIM_KERNEL_SIZE
from utils.methods.nemo.localization import LocalizationConfig, localize_prompt
from utils.methods.nemo.noise import embedding_noise_difference
from utils.methods.nemo.statistics import load_statistics, prompt_activations, text_activations
from utils.methods.wanda import (WANDA_PRUNED_CALLS, WANDA_SPARSITY, WANDA_SUBSET_SEED, WANDA_SUBSET_SIZE,
                                 pruning as wanda)
from utils.models import load_pipeline_from_args

SUBSETS = 3  # disjoint subsets of the memorized prompts compared pairwise (our choice; Chavhan et al. Fig. 2)
# A prompt enters a ratio only when the method it divides by lowered S by at least this much.
MIN_DROP = 0.05
NEMO, PRUNED, BOTH = "NeMo", "Wanda (pruned model)", "NeMo on the Wanda-pruned model"  # rows of experiments/tables.py
TRIGGER_STARTS = 5  # random starts of the triggers analysis (the paper: 100)


def disjoint_subsets(rows: int, count: int, size: int, seed: int) -> list[list[int]]:
    """``count`` disjoint seeded subsets of ``size`` rows each."""
    if count * size > rows:
        raise ValueError(f"{count} disjoint subsets of {size} prompts need {count * size} prompts, the file has {rows}")
    order = random.Random(seed).sample(range(rows), count * size)
    return [sorted(order[i * size:(i + 1) * size]) for i in range(count)]


def pairwise_iou(masks: list[wanda.WandaMasks], others: list[wanda.WandaMasks] | None = None) -> np.ndarray:
    """Per layer the mean IoU over pairs: within ``masks``, or between ``masks`` and ``others``: [layers]."""
    pairs = itertools.combinations(masks, 2) if others is None else itertools.product(masks, others)
    return np.mean([wanda.mask_iou(a, b) for a, b in pairs], axis=0)


def wanda_overlap(argv) -> dict:
    parser = cli.parser_for(__doc__)
    parser.epilog = ("Wanda's defaults (--subset_size, --sparsity, --calls) are script 7's, from the authors' code "
                     "(ruchikachavhan/concept-prune); --subsets and --seed are our choice.")
    parser.add_argument("-d", "--dataset", required=True, help="memorized prompt file")
    parser.add_argument("--unmemorized", default=None, help="non-memorized prompt file for the reference level")
    parser.add_argument("--subsets", type=positive_int, default=SUBSETS, help="disjoint prompt subsets per file")
    parser.add_argument("--subset_size", type=positive_int, default=WANDA_SUBSET_SIZE, help="prompts per subset (m)")
    parser.add_argument("--sparsity", type=fraction, default=WANDA_SPARSITY, help="Wanda's share of each row")
    parser.add_argument("--calls", type=positive_int, default=WANDA_PRUNED_CALLS, help="U-Net calls united")
    parser.add_argument("--seed", type=int, default=WANDA_SUBSET_SEED, help="seed of the subsets")
    parser.add_argument("-o", "--output", default="results/locality", help="folder of wanda_overlap.json/.png")
    cli.add_model_args(parser)
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)

    pipe = load_pipeline_from_args(args)
    null = wanda.input_norms(pipe, [wanda.NULL_PROMPT], calls=args.calls)

    def masks_of(path: str) -> list[wanda.WandaMasks]:
        captions = read_prompts(path)["Caption"]
        subsets = disjoint_subsets(len(captions), args.subsets, args.subset_size, args.seed)
        return [wanda.wanda_masks(pipe.unet, wanda.input_norms(pipe, [captions[i] for i in rows], calls=args.calls),
                                  wanda.scale(null, len(rows)), args.sparsity) for rows in subsets]

    memorized = masks_of(args.dataset)
    result = dict(layers=memorized[0].layers, sparsity=args.sparsity, subsets=args.subsets,
                  subset_size=args.subset_size, memorized_vs_memorized=pairwise_iou(memorized).tolist(),
                  pruned_fraction=np.mean([m.pruned_fraction() for m in memorized], axis=0).tolist())
    if args.unmemorized:
        result["memorized_vs_unmemorized"] = pairwise_iou(memorized, masks_of(args.unmemorized)).tolist()
    axis = new_axis()
    x = np.arange(len(result["layers"]))
    series = [k for k in ("memorized_vs_memorized", "memorized_vs_unmemorized") if k in result]
    for k, name in enumerate(series):
        axis.bar(x + (k - (len(series) - 1) / 2) * 0.4, result[name], 0.4, label=name.replace("_", " "))
    axis.set(xlabel="ff.net.2 layer (execution order)", ylabel="mask IoU", ylim=(0, 1))
    axis.legend()
    os.makedirs(args.output, exist_ok=True)
    result["figure"] = save_figure(axis, os.path.join(args.output, "wanda_overlap.png"))
    write_json(os.path.join(args.output, "wanda_overlap.json"), result)
    print("mean IoU per layer, memorized subsets: " + ", ".join(f"{v:.2f}" for v in result["memorized_vs_memorized"]))
    if "memorized_vs_unmemorized" in result:
        print("mean IoU per layer, memorized vs non-memorized: "
              + ", ".join(f"{v:.2f}" for v in result["memorized_vs_unmemorized"]))
    return result


def agreement_from(report: dict, types: dict[int, str], pruned_on: set[int]) -> dict:
    """The two ratios of the module docstring per prompt, summarized per type and by P."""
    rows = report["rows"]
    column = report["columns"][1]  # the *_Orig column
    values = {}
    for name in (PLAIN, NEMO, PRUNED, BOTH):  # a pruned model's rows come in two: prompts not in P, and P
        values[name] = {}
        for row in (name, name + IN_P):
            if row in rows:
                values[name].update({int(p): v for p, v in rows[row]["per_prompt"][column].items()})
    nemo_left, wanda_left = {}, {}
    for p in values[BOTH]:
        plain, nemo, pruned, both = (values[k][p] for k in (PLAIN, NEMO, PRUNED, BOTH))
        if plain - nemo >= MIN_DROP:
            nemo_left[p] = (pruned - both) / (plain - nemo)
        if plain - pruned >= MIN_DROP:
            wanda_left[p] = (nemo - both) / (plain - pruned)
    result = dict(column=column, min_drop=MIN_DROP, per_prompt=dict(nemo_left_on_pruned=nemo_left,
                                                                    wanda_left_with_nemo=wanda_left))
    for name, per_prompt in result["per_prompt"].items():
        result[name] = {group: summarize({p: v for p, v in per_prompt.items() if (p in pruned_on) == in_p}, types)
                        for group, in_p in (("prompts in P", True), ("prompts not in P", False))
                        if any((p in pruned_on) == in_p for p in per_prompt)}
    return result


def agreement_figure(result: dict, path: str) -> str:
    """Per prompt, NeMo's mitigation left on the pruned model against Wanda's left with NeMo."""
    axis = new_axis()
    for name, marker in (("nemo_left_on_pruned", "o"), ("wanda_left_with_nemo", "s")):
        values = result["per_prompt"][name]
        axis.scatter(list(values), list(values.values()), marker=marker, label=name.replace("_", " "))
    axis.axhline(0, color="gray", linewidth=0.8)
    axis.axhline(1, color="gray", linewidth=0.8, linestyle="--")
    axis.set(xlabel="prompt row", ylabel=f"share of the mitigation left ({result['column']})")
    axis.legend()
    return save_figure(axis, path)


def agreement(argv) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--table", required=True, help="output folder of 6_reproduce_table1.py (its table1.json)")
    parser.add_argument("-d", "--dataset", required=True, help="the memorized prompt file of that run")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    path = os.path.join(args.table, "table1.json")
    report = read_json(path, "Table-1 report (6_reproduce_table1.py --output)")
    missing = [name for name in (PLAIN, NEMO, PRUNED, BOTH) if name not in report.get("rows", {})]
    if missing or not report.get("wanda"):
        raise ValueError(f"{path} lacks the rows {missing or ['wanda']}: run script 6 with every setting")
    prompts = read_prompts(args.dataset)
    types = dict(enumerate(prompts["type"])) if "type" in prompts else {}
    result = agreement_from(report, types, set(report["wanda"]["rows"]))
    result["figure"] = agreement_figure(result, os.path.join(args.table, "nemo_wanda_agreement.png"))
    write_json(os.path.join(args.table, "nemo_wanda_agreement.json"), result)
    for name in ("nemo_left_on_pruned", "wanda_left_with_nemo"):
        for group, figures in result[name].items():
            print(f"{name}, {group}: median {figures['overall']['median']:.2f} over {figures['overall']['n']} prompts")
    return result


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of all pairs of rows of x [n, d]: [n (n - 1) / 2]."""
    rows, cols = torch.triu_indices(len(x), len(x), offset=1)
    return (x[rows] - x[cols]).norm(dim=1)


def neuron_iou(a: list[list[int]], b: list[list[int]]) -> list[float]:
    """Per layer the intersection over union of two neuron sets (1 where both are empty)."""
    result = []
    for x, y in zip(a, b):
        x, y = set(x), set(y)
        result.append(len(x & y) / len(x | y) if x | y else 1.0)
    return result


def triggers_parser():
    parser = cli.parser_for(__doc__)
    parser.epilog = ("Attack defaults are script 8's, from the Dori paper (Adam, lr 0.1, 50 steps; SSCD > 0.7 replicates); "
                     "the paper draws 100 starts; the MS-SSIM kernel is NeMo's (the authors' scripts).")
    parser.add_argument("-d", "--dataset", required=True, help="memorized prompt file")
    parser.add_argument("--originals", required=True, help="training images, one per prompt row")
    parser.add_argument("--prompt", type=non_negative_int, default=0, help="row of the prompt whose training image is attacked")
    parser.add_argument("--starts", type=positive_int, default=TRIGGER_STARTS,
                        help=f"random starts N(0, I) (the paper: 100; {TRIGGER_STARTS} here for the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starts")
    parser.add_argument("--attack_steps", type=positive_int, default=ATTACK_STEPS, help="steps of each attack")
    cli.add_replication_args(parser)
    parser.add_argument("--statistics", default=None, help="activation statistics: with them, NeMo's neurons per trigger")
    parser.add_argument("--memorization_threshold", type=float, default=None, help="tau_mem for NeMo (with --statistics)")
    parser.add_argument("--ssim_kernel_size", type=positive_int, default=SSIM_KERNEL_SIZE,
                        help="MS-SSIM kernel for NeMo (5 on the test bed)")
    parser.add_argument("-o", "--output", default="results/locality", help="folder of triggers.json/.png")
    cli.add_model_args(parser)
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    return parser


def triggers(argv) -> dict:
    args = cli.parse(triggers_parser(), argv)
    threshold = cli.replication_threshold(args)
    prompts = read_prompts(args.dataset)
    originals = original_images(args.originals)
    if args.prompt not in originals:
        raise ValueError(f"prompt row {args.prompt} has no original image in {args.originals}")
    pipe = load_pipeline_from_args(args)
    similarity = similarity_to_original(args.similarity, pipe.device, args.sscd_model)
    original = load_images([originals[args.prompt]])[0]
    tau = args.memorization_threshold if args.memorization_threshold is not None else MEMORIZATION_THRESHOLD
    localization = LocalizationConfig(pairwise_ssim_threshold=tau, ssim_threshold_initial_selection=tau,
                                      ssim_threshold_refinement=tau)
    captions = prompts["Caption"]
    result = trigger_analysis(pipe, args.prompt, captions[args.prompt], captions.tolist(), original, similarity,
                              threshold, starts=args.starts, attack_steps=args.attack_steps, seed=args.seed,
                              statistics=args.statistics, localization=localization,
                              ssim_kernel_size=args.ssim_kernel_size)
    os.makedirs(args.output, exist_ok=True)
    if "activation_discrepancy" in result:
        result["figure"] = triggers_figure(result, os.path.join(args.output, "triggers.png"))
    write_json(os.path.join(args.output, "triggers.json"), result)
    print_triggers(result)
    return result


def trigger_analysis(pipe, prompt: int, caption: str, captions: list[str], original, similarity, threshold: float, *,
                     starts: int, attack_steps: int, seed: int, statistics: str | None = None,
                     localization: LocalizationConfig | None = None, ssim_kernel_size: int = SSIM_KERNEL_SIZE) -> dict:
    """The triggers of the module docstring: attacks on the training image ``original`` of row
    ``prompt`` from random starts, those whose images' ``similarity`` beats ``threshold``
    against the memorized ``captions``, and with ``statistics`` NeMo's neurons of each (found
    with ``localization``, default: script 3's)."""
    layers = value_layers(pipe.unet)
    own = encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption])  # [1, 77, dim]
    found = find_triggers(pipe, original, own, similarity, starts=starts, steps=attack_steps, seed=seed)
    replicating = [f for f in found if f["similarity"] > threshold]
    triggers_ = torch.cat([f["embedding"] for f in replicating]) if replicating else torch.zeros(0, *own.shape[1:])
    others = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)  # [m, 77, dim]
    result = dict(prompt=prompt, caption=caption, starts=starts, replicating=len(replicating), threshold=threshold,
                  similarities=[round(f["similarity"], 4) for f in found],
                  distance_to_own=[round((f["embedding"] - own.cpu()).norm().item(), 3) for f in replicating])
    if len(replicating) >= 2:
        result.update(trigger_spread(pipe, layers, triggers_, others))
    if statistics and replicating:
        result["nemo_neurons"] = trigger_neurons(pipe, layers, load_statistics(statistics, layers), own.cpu(),
                                                 triggers_, localization or LocalizationConfig(), ssim_kernel_size)
    return result


def find_triggers(pipe, original, own: torch.Tensor, similarity, *, starts: int, steps: int, seed: int) -> list[dict]:
    """Attacks on ``original`` from ``starts`` random embeddings N(0, I) shaped like ``own``
    [1, 77, dim]: each one's embedding [1, 77, dim] (CPU) and the best similarity of its images."""
    target = dori.image_latents(pipe, [original])
    latents = generation_latents(pipe.unet, num_samples=4)
    generator = torch.Generator().manual_seed(seed)
    found = []
    for start in range(starts):
        initial = torch.randn(own.shape, generator=generator)
        embedding = dori.attack(pipe, target, initial, steps=steps, seed=seed + start).embedding
        images = generate_prompt_images(pipe, PromptCondition(embedding), latents)
        found.append(dict(embedding=embedding.cpu(), similarity=similarity(original, images).max().item()))
    return found


def trigger_spread(pipe, layers, triggers_: torch.Tensor, others: torch.Tensor) -> dict:
    """Pairwise distances of the triggers [t, 77, dim] and of the prompts' embeddings [m, 77, dim],
    and per value layer the mean pairwise distance of the activations each set causes."""
    def per_layer(embeddings: torch.Tensor) -> list[torch.Tensor]:
        return [a.cpu() for a in text_activations(layers, embeddings.to(pipe.unet.device, pipe.unet.dtype))]

    return dict(trigger_distances=summary_of(pairwise_distances(triggers_.flatten(1))),
                prompt_distances=summary_of(pairwise_distances(others.cpu().flatten(1))),
                activation_discrepancy=dict(
                    triggers=[summary_of(pairwise_distances(a))["mean"] for a in per_layer(triggers_)],
                    memorized_prompts=[summary_of(pairwise_distances(a))["mean"] for a in per_layer(others)]))


def trigger_neurons(pipe, layers, stats, own: torch.Tensor, triggers_: torch.Tensor, settings: LocalizationConfig,
                    ssim_kernel_size: int) -> dict:
    """NeMo's refined neurons of the prompt's embedding ``own`` [1, 77, dim] and of each trigger
    [t, 77, dim], and per trigger their IoU with the prompt's per layer."""
    neuron_sets = []
    for embedding in [own] + [t[None] for t in triggers_]:
        activations = prompt_activations(layers, embedding.to(pipe.unet.device, pipe.unet.dtype))
        noise = embedding_noise_difference(pipe, layers, embedding)
        neuron_sets.append(localize_prompt(noise, latent_shape(pipe.unet), stats.z_scores(activations), activations,
                                           settings, ssim_kernel_size).refined_neurons)
    return dict(prompt=neuron_sets[0], triggers=neuron_sets[1:],
                iou_with_prompt=[neuron_iou(neuron_sets[0], n) for n in neuron_sets[1:]])


def triggers_figure(result: dict, path: str) -> str:
    """Per value layer the activation discrepancy of the triggers against the memorized prompts'."""
    axis = new_axis()
    x = np.arange(len(result["activation_discrepancy"]["triggers"]))
    for k, name in enumerate(("triggers", "memorized_prompts")):
        axis.bar(x + (k - 0.5) * 0.4, result["activation_discrepancy"][name], 0.4,
                 label=f"{name.replace('_', ' ')} (mean pairwise L2)")
    axis.set(xlabel="value layer", ylabel="activation discrepancy")
    axis.legend()
    return save_figure(axis, path)


def print_triggers(result: dict) -> None:
    print(f"{result['replicating']} of {result['starts']} random starts replicate prompt {result['prompt']}'s image "
          f"(> {result['threshold']})")
    for key in ("trigger_distances", "prompt_distances"):
        if key in result:
            print(f"{key.replace('_', ' ')}: mean {result[key]['mean']:.2f}, min {result[key]['min']:.2f}")


def summary_of(values: torch.Tensor) -> dict[str, float]:
    """Mean, min, max and count of values [n]."""
    return dict(mean=values.mean().item(), min=values.min().item(), max=values.max().item(), n=len(values))


COMMANDS = {"wanda-overlap": wanda_overlap, "agreement": agreement, "triggers": triggers}


def main(argv=None) -> dict:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise ValueError(f"usage: python -m experiments.locality {{{','.join(COMMANDS)}}} [--help]")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    cli.run(main)
