"""The test bed's Table 1: NeMo end to end on the built-in model (`make demo`).

Runs the numbered scripts in order on testbed/model: statistics (1) -> threshold (2) ->
localization (3) -> generation with all neurons, random neurons and NeMo's neurons (4) ->
metrics, and prints the paper's Table 1 for the test bed. SSCD needs weights this
repository cannot ship, so image similarity uses pixel-space SSIM to the training image
(SSIM_Orig) and the weight-free pixel embedder of metrics/ (Pix_Gen, Pix_Div: stand-ins for
SSCD_Gen and D_SSCD). Everything goes to --output; reruns reuse finished steps.
"""

from __future__ import annotations

import importlib
import json
import os

import torch
from PIL import Image

import testbed
from testbed.pixel_memorization import ssim_to_original
from metrics.core import cosine_matrix, detection_metrics, median, paired_cosine, summarize, upper_triangle
from metrics.embedders import PixelEmbedder
from metrics.images import generated_images, original_images
from utils import cli
from utils.files import read_csv, read_prompts, read_threshold, threshold_path
from utils.layers import count_neurons

SCRIPTS = ["1_compute_activations_statistics", "2_compute_pairwise_ssim", "3_detect_memorized_neurons",
           "4_generate_images"]
SETTINGS = {"all neurons active": [], "random neurons": ["--block_random_neurons"], "NeMo": ["--refined_neurons"]}
# Demo size: prompts per type that fit the README's ~10-minute budget on 2 CPU cores
# (BENCHMARKS.md); the test bed has 12 of each.
DEMO_PROMPTS = {"VM": 6, "TM": 2}


def script(number: int):
    return importlib.import_module(SCRIPTS[number - 1])


def load_images(folder: str) -> dict[int, list[Image.Image]]:
    """Script 4's images of each prompt, as RGB."""
    return {prompt: [Image.open(p).convert("RGB") for p in paths] for prompt, paths in generated_images(folder).items()}


def image_metrics(images: dict[int, list[Image.Image]], plain: dict[int, torch.Tensor], originals: dict[int, str],
                  types: dict[int, str], embed: PixelEmbedder) -> dict:
    """Median over prompts (and MAD) per type of SSIM_Orig, Pix_Gen and Pix_Div.

    plain: the pixel embeddings [n, d] of each prompt's images with all neurons active.
    """
    per_prompt = {"SSIM_Orig": {}, "Pix_Gen": {}, "Pix_Div": {}}
    for prompt, generated in images.items():
        embeddings = embed(generated)  # [n, d]
        per_prompt["SSIM_Orig"][prompt] = median(ssim_to_original(Image.open(originals[prompt]), generated))
        per_prompt["Pix_Gen"][prompt] = median(paired_cosine(embeddings, plain[prompt]))
        per_prompt["Pix_Div"][prompt] = median(upper_triangle(cosine_matrix(embeddings, embeddings)))
    return {name: summarize(values, types) for name, values in per_prompt.items()}


def memorized_subset(counts: dict[str, int], path: str) -> list[int]:
    """Write the first ``counts[type]`` memorized prompts of each type to ``path`` (the
    authors' format); returns their rows in the full prompt file (the originals' numbers)."""
    prompts = read_prompts(testbed.MEMORIZED_PROMPTS)
    rows = [i for kind, n in counts.items() for i in prompts.index[prompts["type"] == kind][:n]]
    prompts.loc[rows].reset_index(drop=True).to_csv(path, sep=";")
    return rows


def run_pipeline(args) -> dict:
    out = args.output
    memorized = os.path.join(out, "memorized_prompts.csv")
    rows = memorized_subset({"VM": args.vm, "TM": args.tm}, memorized)
    model = ["-v", args.model]
    kernel = ["--ssim_kernel_size", str(testbed.SSIM_KERNEL_SIZE)]
    statistics = os.path.join(out, "statistics.pt")
    if not os.path.exists(statistics):
        script(1).main(["--prompts", testbed.ADDITIONAL_PROMPTS, "--output", statistics, *model])
    scores = {}
    for kind, prompts in (("unmemorized", testbed.UNMEMORIZED_PROMPTS), ("memorized", memorized)):
        scores[kind] = os.path.join(out, f"scores_{kind}.csv")
        script(2).main(["--prompts", prompts, "--output", scores[kind], "--resume", *model, *kernel])
    threshold = read_threshold(threshold_path(scores["unmemorized"]))
    results = os.path.join(out, "memorization_statistics.csv")
    script(3).main(["-d", memorized, "-o", results, "--statistics", statistics, "--resume",
                    "--memorization_threshold", str(threshold), *model, *kernel])
    folders = {}
    for name, flags in SETTINGS.items():
        folders[name] = os.path.join(out, "images", name.replace(" ", "_"))
        script(4).main(["-f", results, "-d", memorized, "-o", folders[name], "--steps", str(args.steps),
                        "-n", str(args.num_samples), "-b", str(args.num_samples), *flags, *model])
    return dict(threshold=threshold, scores=scores, results=results, folders=folders, prompts=memorized, rows=rows)


def table(run: dict) -> dict:
    prompts = read_prompts(run["prompts"])
    types = dict(enumerate(prompts["type"]))
    memorized = read_csv(run["scores"]["memorized"], ("Memorization Score",), "score file")["Memorization Score"]
    unmemorized = read_csv(run["scores"]["unmemorized"], ("Memorization Score",), "score file")["Memorization Score"]
    detection = detection_metrics(torch.tensor(memorized.values), torch.tensor(unmemorized.values), run["threshold"])
    results = read_csv(run["results"], ("Refined Neurons", "Refined SSIM"), "results file")
    refined = [json.loads(cell) for cell in results["Refined Neurons"]]
    neurons = {i: count_neurons(cell) for i, cell in enumerate(refined)}
    all_originals = original_images(testbed.ORIGINALS_DIR)
    originals = {i: all_originals[row] for i, row in enumerate(run["rows"])}
    embed = PixelEmbedder()
    plain = {prompt: embed(images) for prompt, images in load_images(run["folders"]["all neurons active"]).items()}
    rows = {}
    for name, folder in run["folders"].items():
        figures = image_metrics(load_images(folder), plain, originals, types, embed)
        counts = summarize(neurons, types) if name != "all neurons active" else summarize(
            {i: 0 for i in neurons}, types)
        rows[name] = dict(neurons=counts, **figures)
    return dict(threshold=run["threshold"], detection=detection, rows=rows, checks=checks(rows),
                neurons_per_prompt={f"{types[i]} {prompts['Caption'][i]}": n for i, n in neurons.items()},
                neurons_per_layer=[sum(len(cell[layer]) for cell in refined) for layer in range(len(refined[0]))],
                localized=int(sum(1 for i, n in neurons.items() if n > 0)),
                refined_at_or_below=int((results["Refined SSIM"] <= run["threshold"]).sum()),
                prompts=len(results))


def checks(rows: dict) -> dict:
    """Issue 3, point 3, per type: SSIM_Orig and Pix_Div of NeMo and random neurons relative
    to all neurons active (NeMo should halve SSIM_Orig and lower Pix_Div, i.e. raise
    diversity; random neurons should move neither by more than 10%)."""
    plain = rows["all neurons active"]
    result = {}
    for kind in plain["SSIM_Orig"]:
        ratio = lambda name, column: rows[name][column][kind]["median"] / plain[column][kind]["median"]
        result[kind] = {"NeMo SSIM_Orig ratio": ratio("NeMo", "SSIM_Orig"),
                        "NeMo Pix_Div ratio": ratio("NeMo", "Pix_Div"),
                        "random SSIM_Orig ratio": ratio("random neurons", "SSIM_Orig"),
                        "random Pix_Div ratio": ratio("random neurons", "Pix_Div")}
    return result


def print_table(report: dict) -> None:
    columns = ["neurons", "SSIM_Orig", "Pix_Gen", "Pix_Div"]
    print(f"\nTest-bed Table 1 (median over prompts, VM / TM; tau_mem = {report['threshold']:.3f})")
    print(f"{'setting':<20}" + "".join(f"{c:>16}" for c in columns))
    for name, row in report["rows"].items():
        cells = []
        for column in columns:
            groups = row[column]
            cells.append(" / ".join(f"{groups[t]['median']:.2f}" if t in groups else "-" for t in ("VM", "TM")))
        print(f"{name:<20}" + "".join(f"{c:>16}" for c in cells))
    d = report["detection"]
    print("\ndetection: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items() if isinstance(v, float)))
    print(f"neurons found for {report['localized']} of {report['prompts']} memorized prompts; refined score <= "
          f"tau_mem for {report['refined_at_or_below']}")
    print("refined neurons per layer (summed over prompts): " + ", ".join(map(str, report["neurons_per_layer"])))
    print("refined neurons per prompt: " + ", ".join(f"{n} ({p})" for p, n in report["neurons_per_prompt"].items()))
    for kind, ratios in report["checks"].items():
        print(f"{kind}: " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items()))


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--model", default=testbed.MODEL_DIR, help="diffusers folder of the test bed")
    parser.add_argument("--output", default="demo_output", help="folder for every file the run writes")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the generations (paper: 50)")
    parser.add_argument("--num_samples", type=int, default=10, help="images per prompt (paper: 10)")
    for kind, n in DEMO_PROMPTS.items():
        parser.add_argument(f"--{kind.lower()}", type=int, default=n,
                            help=f"how many {kind} prompts, of the test bed's 12 (default sized to fit the demo in "
                                 "about 10 minutes on 2 CPU cores)")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    args = cli.parse(parser, argv)
    os.makedirs(args.output, exist_ok=True)
    report = table(run_pipeline(args))
    with open(os.path.join(args.output, "table1.json"), "w") as f:
        json.dump(report, f, indent=1)
    print_table(report)
    return report


if __name__ == "__main__":
    cli.run(main)
