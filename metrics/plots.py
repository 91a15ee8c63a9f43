"""Figures of the paper as PNG: memorization-score distributions of memorized and non-memorized
prompts (Fig. 2a, from script 2's score files) and the number of neurons per prompt (Fig. 4a)
and per layer (Fig. 4b, from script 3's results file). With a memorized prompt file (column
'type') memorized prompts are split into VM and TM.
"""

from __future__ import annotations

import logging
import os
import textwrap
from functools import partial

import numpy as np
from matplotlib.figure import Figure

from metrics.detection import add_score_args, read_scores, row_types, scores_of, threshold_from
from utils.cli import parse, parser_for, run
from utils.files import read_results
from utils.layers import count_neurons

logger = logging.getLogger(__name__)
NUM_VALUE_LAYERS = 7  # value layers of SD v1.x and of the test bed (SPEC §1)
SCORE_BINS = 40
NEURON_COLUMNS = {"refined": "Refined Neurons", "initial": "Initial Neurons"}
FIGURE_SIZE = (5, 3.5)  # inches
DPI = 150


def new_axis():
    """A new figure's axes; figures are drawn with matplotlib's Agg canvas, without pyplot
    (no display, no global state)."""
    return Figure(figsize=FIGURE_SIZE, layout="tight").subplots()


def save_figure(axis, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    axis.figure.savefig(path, dpi=DPI)
    logger.info("wrote %s", path)
    return path


def score_distributions(series: dict[str, np.ndarray], threshold: float | None, path: str) -> str:
    """Fig. 2a: histograms of memorization scores, one per group (e.g. non-memorized, VM, TM)."""
    values = np.concatenate(list(series.values()))
    bins = np.linspace(values.min(), values.max(), SCORE_BINS + 1)
    axis = new_axis()
    for name, scores in series.items():
        axis.hist(scores, bins=bins, alpha=0.6, label=f"{name} ({len(scores)})")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set(xlabel="memorization score (max pairwise SSIM)", ylabel="prompts")
    axis.legend()
    return save_figure(axis, path)


def neurons_per_prompt(counts: dict[str, np.ndarray], path: str) -> str:
    """Fig. 4a: histogram of the number of neurons per prompt [n_prompts], one bar series per group."""
    top = max(int(c.max()) for c in counts.values() if len(c))
    bins = np.arange(top + 2) - 0.5
    axis = new_axis()
    axis.hist(list(counts.values()), bins=bins, label=[f"{name} ({len(c)})" for name, c in counts.items()])
    axis.set(xlabel="neurons per prompt", ylabel="prompts")
    axis.legend()
    return save_figure(axis, path)


def neurons_per_layer(counts: dict[str, np.ndarray], path: str) -> str:
    """Fig. 4b: neurons of each layer [n_layers] summed over prompts, grouped bars per group."""
    axis = new_axis()
    width = 0.8 / len(counts)
    for k, (name, per_layer) in enumerate(counts.items()):
        axis.bar(np.arange(len(per_layer)) + (k - (len(counts) - 1) / 2) * width, per_layer, width, label=name)
    axis.set(xlabel="value layer", ylabel="neurons (summed over prompts)", xticks=range(NUM_VALUE_LAYERS))
    axis.legend()
    return save_figure(axis, path)


def tradeoff(sweep: dict[str, list[tuple[float, dict[str, float], float]]],
             references: dict[str, tuple[dict[str, float], float]], utility_names: dict[str, str], path: str) -> str:
    """Attack success rate against utility, one panel per utility measure (``utility_names``:
    measure -> axis label): a line per swept knob, one point per setting (knob value,
    {measure: utility}, success), and the reference mitigations as single points."""
    width, height = FIGURE_SIZE
    axes = Figure(figsize=(width * len(utility_names), height), layout="tight").subplots(1, len(utility_names),
                                                                                         squeeze=False)[0]
    for axis, (measure, label) in zip(axes, utility_names.items()):
        for knob, points in sweep.items():
            values, utilities, successes = zip(*points)
            x = [utility[measure] for utility in utilities]
            axis.plot(x, successes, marker="o", label=f"adversarial fine-tuning, {knob}")
            for value, xi, y in zip(values, x, successes):
                axis.annotate(f"{value:g}", (xi, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for (name, (utility, y)), marker in zip(references.items(), "s^vDP*"):
            axis.scatter([utility[measure]], [y], marker=marker, s=40, label=name, zorder=3)
        axis.set(xlabel=label, ylabel="attack success rate (re-triggered)", ylim=(-0.05, 1.05))
        axis.margins(x=0.1)  # room for the knob values' labels at the ends
        # below the axes: inside, it hides the reference points that sit at success 1 or 0
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    return save_figure(axes[0], path)


def neuron_counts(neuron_sets: list, groups: list[str]) -> tuple[dict, dict]:
    """Per group: neurons per prompt [n_prompts] and neurons per layer summed over prompts [n_layers]."""
    per_prompt, per_layer = {}, {}
    for group in dict.fromkeys(groups):
        sets = [s for s, g in zip(neuron_sets, groups) if g == group]
        per_prompt[group] = np.array([count_neurons(s) for s in sets])
        per_layer[group] = np.array([sum(len(set(s[layer])) for s in sets) for layer in range(NUM_VALUE_LAYERS)])
    return per_prompt, per_layer


def main(argv=None) -> list[str]:
    parser = parser_for(__doc__)
    add_score_args(parser, required=False)
    parser.add_argument("--results", default=None, help="script 3 results file (neurons per prompt)")
    parser.add_argument("--neurons", choices=tuple(NEURON_COLUMNS), default="refined", help="neuron column to count")
    parser.add_argument("-p", "--prompts", default=None,
                        help="memorized prompt file (column 'type'); splits memorized prompts into VM and TM")
    parser.add_argument("-o", "--output-dir", default="results/plots", help="folder of the PNG files")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parse(parser, argv)
    if not args.memorized and not args.results:
        parser.error("nothing to plot: pass --memorized (Fig. 2a) and/or --results (Fig. 4)")

    written = []
    if args.memorized:
        memorized = read_scores(args.memorized)
        groups = row_types(args.prompts, memorized, args.memorized) if args.prompts else ["memorized"] * len(memorized)
        scores = scores_of(memorized).numpy()
        series = {"non-memorized": scores_of(read_scores(args.unmemorized)).numpy()}
        series.update({group: scores[[g == group for g in groups]] for group in dict.fromkeys(groups)})
        written.append(score_distributions(series, threshold_from(args),
                                           os.path.join(args.output_dir, "memorization_scores.png")))
    if args.results:
        results = read_results(args.results, None)
        groups = row_types(args.prompts, results, args.results) if args.prompts else ["all"] * len(results)
        per_prompt, per_layer = neuron_counts(list(results[NEURON_COLUMNS[args.neurons]]), groups)
        written.append(neurons_per_prompt(per_prompt, os.path.join(args.output_dir, "neurons_per_prompt.png")))
        written.append(neurons_per_layer(per_layer, os.path.join(args.output_dir, "neurons_per_layer.png")))
    print("\n".join(written))
    return written


# Image grids: a cell per image, captioned; groups of cells under one header.
GRID_CELL = 96  # pixels of an image's side in a grid
GRID_TEXT = 12  # pixels of a caption line
GRID_LABEL_WIDTH = 150  # pixels of the row labels
wrap_at_spaces = partial(textwrap.wrap, break_long_words=False, break_on_hyphens=False)  # caption lines
COPY_COLOURS = {"own": (200, 120, 0), "other": (200, 0, 0), None: (60, 60, 60)}  # caption colour by what it copies


def image_grid(title: str, groups: list[tuple[str, int]], rows: list[tuple[str, list]], path: str) -> str:
    """A PNG grid. groups: (header, number of cells) from left to right; rows: (label, cells),
    each cell ``(image or None, caption, copies)`` with copies None, "own" or "other" (the
    caption's colour: copies nothing above the threshold, its own original, another one)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=GRID_TEXT - 1)
    cells = sum(n for _, n in groups)
    header = GRID_TEXT * (3 + max(len(wrap_at_spaces(name, max(8, n * GRID_CELL // 7))) for name, n in groups))
    height_of_row = GRID_CELL + 2 * GRID_TEXT
    canvas = Image.new("RGB", (GRID_LABEL_WIDTH + cells * GRID_CELL, header + len(rows) * height_of_row), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black", font=font)
    x = GRID_LABEL_WIDTH
    for name, n in groups:
        for k, line in enumerate(wrap_at_spaces(name, max(8, n * GRID_CELL // 7))):
            draw.text((x + 2, GRID_TEXT * (2 + k)), line, fill="black", font=font)
        draw.line([(x, GRID_TEXT * 2), (x, canvas.height)], fill=(200, 200, 200))
        x += n * GRID_CELL
    for r, (label, row) in enumerate(rows):
        y = header + r * height_of_row
        for k, line in enumerate(wrap_at_spaces(label, GRID_LABEL_WIDTH // 7)[:6]):
            draw.text((4, y + k * GRID_TEXT), line, fill="black", font=font)
        for c, (image, caption, copies) in enumerate(row):
            left = GRID_LABEL_WIDTH + c * GRID_CELL
            if image is not None:
                canvas.paste(image.convert("RGB").resize((GRID_CELL - 4, GRID_CELL - 4)), (left + 2, y))
            draw.text((left + 2, y + GRID_CELL - 2), caption, fill=COPY_COLOURS[copies], font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    logger.info("wrote %s", path)
    return path


if __name__ == "__main__":
    run(main)
