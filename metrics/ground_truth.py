"""The planted test bed's ground truth (testbed/train_planted.py): which value neurons each
planted prompt's replication runs through, and how a method's neuron set compares with it.

A set *stops the replication* of a prompt when, with it deactivated, the prompt's median
SSIM to its training image is at most ``STOP_RATIO`` of the value with nothing deactivated
(the issue's criterion for the planted neurons themselves).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from utils.files import RESULT_COLUMNS
from utils.layers import NeuronSet, count_neurons, distinct_neurons, validate_neuron_set

STOP_RATIO = 0.5  # ours: SSIM to the original with the planted neurons off <= 0.5x the plain value


@dataclass(frozen=True)
class GroundTruth:
    """Per planted prompt (its row in the planted memorized prompt file) its neurons."""

    layers: list[str]  # value layers, in execution order
    widths: list[int]
    neurons: dict[int, NeuronSet]
    captions: dict[int, str]
    types: dict[int, str]


def read_ground_truth(path: str, widths: list[int] | None = None) -> GroundTruth:
    """``ground_truth.json``; with ``widths`` (the model's value-layer widths) a ValueError
    unless they are the file's."""
    with open(path) as f:
        truth = json.load(f)
    if not isinstance(truth, dict) or not {"layers", "widths", "prompts"} <= set(truth):
        raise ValueError(f"{path}: expected a ground truth with 'layers', 'widths' and 'prompts'")
    if widths is not None and list(widths) != truth["widths"]:
        raise ValueError(f"{path}: ground truth for value layers of widths {truth['widths']}, the model has {widths}")
    prompts = truth["prompts"]
    return GroundTruth(list(truth["layers"]), list(truth["widths"]),
                       {p["index"]: validate_neuron_set(p["neurons"], truth["widths"], f"{path} prompt {p['index']}")
                        for p in prompts},
                       {p["index"]: p["caption"] for p in prompts}, {p["index"]: p["type"] for p in prompts})


def _pairs(neurons: NeuronSet) -> set[tuple[int, int]]:
    return {(layer, n) for layer, indices in enumerate(distinct_neurons(neurons)) for n in indices}


def recall_precision(found: NeuronSet, truth: NeuronSet) -> tuple[float, float]:
    """Share of the true neurons found, share of the found neurons that are true (NaN for an
    empty set); a neuron listed twice counts once."""
    found_pairs, true_pairs = _pairs(found), _pairs(truth)
    hits = len(found_pairs & true_pairs)
    return hits / len(true_pairs), hits / len(found_pairs) if found_pairs else math.nan


def results_frame(truth: GroundTruth) -> pd.DataFrame:
    """The ground truth as a results file of script 3 (its neurons as initial and refined), so
    script 4 deactivates them (--refined_neurons) or as many random ones (--block_random_neurons).
    The SSIM columns hold 0, script 3's value for a prompt it did not score: the ground truth
    is not a NeMo run (a results file must hold numbers there)."""
    rows = [{"Caption": truth.captions[i], "URL": f"planted:{i}", "Initial Neurons": str(truth.neurons[i]),
             "Initial SSIM": 0.0, "Refined Neurons": str(truth.neurons[i]), "Refined SSIM": 0.0}
            for i in sorted(truth.neurons)]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def stops(ssim_off: float | None, ssim_plain: float | None) -> bool | None:
    """Whether a set stops a prompt's replication (see the module's note); None if unmeasured."""
    if ssim_off is None or ssim_plain is None:
        return None
    return ssim_off <= STOP_RATIO * ssim_plain


def lost_at(initial: NeuronSet, refined: NeuronSet, truth: NeuronSet) -> dict[str, list[tuple[int, int]]]:
    """Which step of NeMo lost each missed true neuron (layer, index): the initial selection
    (never selected) or the refinement (selected, then dropped)."""
    true_pairs, initial_pairs, refined_pairs = _pairs(truth), _pairs(initial), _pairs(refined)
    return {"initial selection": sorted(true_pairs - initial_pairs),
            "refinement": sorted((true_pairs & initial_pairs) - refined_pairs)}


def localization_rows(sets: dict[str, dict[int, NeuronSet]], truth: GroundTruth,
                      ssim: dict[str, dict[int, float]] | None = None) -> list[dict]:
    """One row per method and planted prompt: recall, precision, size, stops.

    sets: method -> prompt row -> its neuron set; ssim: the plain setting (key ``"plain"``) and
    each method -> prompt row -> median SSIM to the original with the set off.
    """
    ssim = ssim or {}
    rows = []
    for method, per_prompt in sets.items():
        for prompt, neurons in sorted(per_prompt.items()):
            recall, precision = recall_precision(neurons, truth.neurons[prompt])
            rows.append(dict(method=method, prompt=prompt, type=truth.types[prompt], recall=recall, precision=precision,
                             size=count_neurons(neurons),
                             stops=stops(ssim.get(method, {}).get(prompt), ssim.get("plain", {}).get(prompt))))
    return rows


def other_unit_rows(method: str, size: int, truth: GroundTruth, ssim: dict[str, dict[int, float]]) -> list[dict]:
    """Rows for a method whose units are not value neurons (Wanda's ``ff.net.2`` weights): no
    recall or precision against the ground truth, only the size and whether removing the
    units stops each prompt's replication (``ssim`` as for ``localization_rows``)."""
    return [dict(method=method, prompt=prompt, type=truth.types[prompt], recall=math.nan, precision=math.nan,
                 size=size, stops=stops(ssim.get(method, {}).get(prompt), ssim.get("plain", {}).get(prompt)))
            for prompt in sorted(truth.neurons)]


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per method: prompts, share with every true neuron found (NaN where the method's units are
    not value neurons), median precision, median size, share whose replication the set stops."""
    frame = pd.DataFrame(rows)
    result = {}
    for method, group in frame.groupby("method", sort=False):
        stopped = group["stops"].dropna()
        comparable = group["recall"].notna().any()
        result[method] = dict(prompts=len(group),
                              all_found=float((group["recall"] == 1).mean()) if comparable else math.nan,
                              recall=float(group["recall"].median()), precision=float(group["precision"].median()),
                              size=float(group["size"].median()),
                              stops=float(stopped.astype(bool).mean()) if len(stopped) else None)
    return result


def markdown(rows: list[dict]) -> str:
    """The localization table: per method and prompt, then the per-method summary."""
    cell = lambda value: "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        ("yes" if value else "no") if isinstance(value, bool) else f"{value:.2f}" if isinstance(value, float) else str(value))
    lines = ["| method | prompt | type | recall | precision | size | stops replication |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['prompt']} | {r['type']} | {cell(r['recall'])} | {cell(r['precision'])} | "
              f"{r['size']} | {cell(r['stops'])} |" for r in rows]
    lines += ["", "| method | prompts | all true neurons found | median recall | median precision | median size | "
              "stops replication |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {s['prompts']} | {cell(s['all_found'])} | {cell(s['recall'])} | {cell(s['precision'])} | "
              f"{cell(s['size'])} | {cell(s['stops'])} |" for m, s in summary(rows).items()]
    return "\n".join(lines) + "\n"
