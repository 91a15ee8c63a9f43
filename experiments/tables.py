"""The paper's Table 1 from the image folders of its rows (SPEC §6; paper Table 1).

Pure table building: the folders are written by script 4 (``6_reproduce_table1.py`` runs it
for every row); this module reads them, computes the columns per prompt (``table_scores``,
one process's share of the prompts under a launcher) and summarizes them per memorization
type. With SSCD and CLIP weights the columns are the paper's; without them, weight-free
stand-ins that the header names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from experiments.rows import IN_P, PLAIN, WANDA, table_rows
from metrics.copies import References, nearest_copies
from metrics.core import (MEMORIZATION_TYPES, OVERALL, alignment_score, diversity_score, median, sscd_gen_score,
                          sscd_orig_scores, summarize)
from metrics.plots import image_grid
from utils.generation import read_records
from utils.images import generated_images, load_images

# Nearest-copy columns (metrics/copies.py): median similarity to the nearest reference, and
# the shares of images above the copy threshold to any reference and to another prompt's.
NEAREST, COPY_ANY, COPY_OTHER = "Nearest", "Copy_any", "Copy_other"
RATES = (COPY_ANY, COPY_OTHER)


@dataclass
class Measures:
    """The per-prompt measures behind the columns.

    orig(original, images) -> similarity to the training image; embed(images) -> [n, d] for
    SSCD_Gen and D_SSCD; align(images, caption) -> alignment (None: not scorable).
    """

    orig_name: str
    gen_name: str
    div_name: str
    embed: Callable[[list[Image.Image]], torch.Tensor]
    orig: Callable[[Image.Image, list[Image.Image], torch.Tensor], float]
    align_name: str | None = None
    align: Callable[[list[Image.Image], str], "float | None"] | None = None
    align_memorized: bool = True  # False: alignment only means something on the held-out prompts
    notes: list[str] = field(default_factory=list)
    references: References | None = None  # nearest copies among all of them (metrics/copies.py)
    own_reference: dict[int, str] = field(default_factory=dict)  # prompt -> its own original's name
    # image quality of the held-out images: (all images, the caption of each) -> one figure (lower is better)
    quality_name: str | None = None
    image_quality: Callable[[list[Image.Image], list[str]], float] | None = None


def embedder_measures(embedder, clip=None) -> Measures:
    """The paper's columns with ``embedder`` (SSCD: SSCD_Orig as the per-prompt maximum, as in
    Table 1) and, with a CLIP embedder, A_CLIP."""
    prefix = "SSCD" if embedder.name == "sscd" else embedder.name.capitalize()
    measures = Measures(f"{prefix}_Orig", f"{prefix}_Gen", f"D_{prefix}", embedder,
                        lambda original, _images, embeddings: sscd_orig_scores(embedder([original])[0], embeddings)["max"])
    if clip is not None:
        measures.align_name = "A_CLIP"
        measures.align = lambda images, caption: alignment_score(clip.embed_texts([caption])[0], clip(images))
    if embedder.name == "sscd":
        measures.notes.append(f"SSCD_*: SSCD checkpoint {embedder.checkpoint}")
    else:
        measures.notes.append(f"{prefix}_*: the {embedder.name} embedder stands in for SSCD (no SSCD weights)")
    return measures


def _prompt_images(folder: str, prompts: set[int] | None = None):
    """(prompt, its images) for each prompt of ``folder`` (only ``prompts`` when given), loaded one prompt at a time."""
    for prompt, paths in generated_images(folder).items():
        if prompts is None or prompt in prompts:
            yield prompt, load_images(paths)


def _median_table(per_prompt: dict[int, float], types: dict[int, str]) -> dict:
    return summarize(per_prompt, types) if per_prompt else {}


def _rate_table(per_prompt: dict[int, float], types: dict[int, str]) -> dict:
    """The mean over prompts of a per-prompt share, i.e. the share of all images (every prompt
    has the same number), overall and per type; summed in prompt order, whichever process
    measured which prompt."""
    groups = {OVERALL: sorted(per_prompt),
              **{k: sorted(p for p in per_prompt if types.get(p) == k) for k in MEMORIZATION_TYPES}}
    return {group: dict(mean=sum(per_prompt[p] for p in members) / len(members), n=len(members))
            for group, members in groups.items() if members}


def score_columns(measures: Measures) -> list[str]:
    """The per-prompt columns of a row under ``measures`` (``folder_scores``)."""
    columns = [measures.orig_name, measures.gen_name, measures.div_name]
    if measures.align is not None and measures.align_memorized:
        columns.append(measures.align_name)
    if measures.references:
        columns += [NEAREST, COPY_ANY, COPY_OTHER]
    return columns


def folder_scores(folder: str, plain: dict[int, torch.Tensor], originals: dict[int, str], captions: dict[int, str],
                  measures: Measures, prompts: set[int] | None = None,
                  embedded: dict[int, torch.Tensor] | None = None) -> dict[int, dict]:
    """Each prompt's measures of one row's folder (only ``prompts`` when given): column -> value
    (``score_columns``), and under "nearest" each image's nearest reference and similarity.

    plain: the embeddings [n, d] of each prompt's images with nothing changed (SSCD_Gen's reference).
    embedded: this folder's embeddings by prompt when already computed (the plain folder's are ``plain``).
    """
    aligned = measures.align is not None and measures.align_memorized
    scores = {}
    for prompt, images in _prompt_images(folder, prompts):
        embeddings = embedded[prompt] if embedded else measures.embed(images)  # [n, d]
        values = {}
        if prompt in originals:
            values[measures.orig_name] = measures.orig(load_images([originals[prompt]])[0], images, embeddings)
        values[measures.gen_name] = sscd_gen_score(embeddings, plain[prompt])
        values[measures.div_name] = diversity_score(embeddings)
        if aligned:
            values[measures.align_name] = measures.align(images, captions[prompt])
        if measures.references:
            shared = embeddings if measures.references.embedder is measures.embed else None
            nearest = nearest_copies(measures.references, images, shared)  # embedded once
            values[NEAREST] = median(nearest.similarity)
            for name, rate in nearest.copies(measures.references.threshold, measures.own_reference.get(prompt)).items():
                values[{"copies_any": COPY_ANY, "copies_other": COPY_OTHER}[name]] = rate
            values["nearest"] = [[name, round(value, 4)] for name, value in zip(nearest.reference,
                                                                              nearest.similarity.tolist())]
        scores[prompt] = values
    return scores


def folder_row(scores: dict[int, dict], types: dict[int, str], measures: Measures) -> dict:
    """Median over prompts (and MAD) per type of each column of one row (Copy_*: the mean), from
    its prompts' ``folder_scores``."""
    per_prompt = {column: {prompt: values[column] for prompt, values in scores.items() if column in values}
                  for column in score_columns(measures)}
    row = {name: (_rate_table if name in RATES else _median_table)(values, types) for name, values in per_prompt.items()}
    row["per_prompt"] = per_prompt
    row["nearest"] = {prompt: values["nearest"] for prompt, values in scores.items() if "nearest" in values}
    return row


def quality_scores(folder: str, captions: dict[int, str], measures: Measures,
                   prompts: set[int] | None = None) -> dict[int, float]:
    """The alignment of each held-out prompt's images of ``folder`` with its original caption
    (only ``prompts`` when given; prompts it cannot score left out)."""
    values = {}
    for prompt, images in _prompt_images(folder, prompts):
        value = measures.align(images, captions[prompt])
        if value is not None:
            values[prompt] = value
    return values


def quality_summary(values: dict[int, float]) -> dict | None:
    """Median alignment over the held-out prompts, and the mean (less coarse where a prompt's
    alignment is a share of a few images)."""
    if not values:
        return None
    summary = summarize(values, {})
    summary[OVERALL]["mean"] = sum(values[prompt] for prompt in sorted(values)) / len(values)
    return summary


def quality_score(folder: str, captions: dict[int, str], measures: Measures) -> dict | None:
    """``quality_summary`` of every held-out prompt of ``folder``."""
    return quality_summary(quality_scores(folder, captions, measures))


def image_quality_score(folder: str, captions: dict[int, str], measures: Measures) -> dict:
    """``measures.image_quality`` of every image of the held-out prompts of ``folder`` at once."""
    images, image_captions = [], []
    for prompt, prompt_images in _prompt_images(folder):
        images += prompt_images
        image_captions += [captions[prompt]] * len(prompt_images)
    return {OVERALL: dict(mean=measures.image_quality(images, image_captions), n=len(images))}


def folder_cost(folder: str) -> dict:
    """Median per prompt of what script 4 recorded: seconds, the mitigation's seconds and U-Net
    sample-forwards, and per image the U-Net sample-forwards and backwards and the seconds of
    the mitigation and the generation together."""
    records = list(read_records(folder).values())
    if not records:
        return {}
    column = lambda key: median(torch.tensor([float(r.get(key, 0)) for r in records]))
    cost = dict(prompts=len(records), seconds=column("seconds"))
    if any("images" in r for r in records):
        per_image = lambda key: median(torch.tensor([float(r.get(key, 0)) / r["images"] for r in records]))
        cost.update(image_seconds=per_image("seconds"), image_unet_sample_forwards=per_image("unet_sample_forwards"),
                    image_unet_sample_backwards=per_image("unet_sample_backwards"))
    if any("mitigation_unet_sample_forwards" in r for r in records):
        cost["mitigation_unet_sample_forwards"] = column("mitigation_unet_sample_forwards")
        cost["mitigation_seconds"] = column("mitigation_seconds")
    return cost


def table_scores(folders: dict[str, str], quality_folders: dict[str, str], originals: dict[int, str],
                 captions: dict[int, str], quality_captions: dict[int, str], measures: Measures,
                 prompts: set[int] | None = None, held_out: set[int] | None = None) -> dict:
    """The per-prompt measures of every row of Table 1 whose folder exists (``folder_scores``)
    and of its held-out images (``quality_scores``); only ``prompts`` and ``held_out`` when
    given (one process's share). Returns {"rows": name -> prompt -> scores, "quality": name ->
    held-out prompt -> alignment}."""
    names = [row.name for row in table_rows() if row.name in folders]
    plain = {prompt: measures.embed(images) for prompt, images in _prompt_images(folders[PLAIN], prompts)}
    rows = {name: folder_scores(folders[name], plain, originals, captions, measures, prompts,
                                plain if name == PLAIN else None) for name in names}
    quality = {name: quality_scores(quality_folders[name], quality_captions, measures, held_out)
               for name in names if name in quality_folders and measures.align}
    return dict(rows=rows, quality=quality)


def build_table(folders: dict[str, str], quality_folders: dict[str, str], originals: dict[int, str],
                captions: dict[int, str], quality_captions: dict[int, str], types: dict[int, str],
                neurons: dict[int, int], measures: Measures, pruned_on: set[int] = frozenset(),
                scores: dict | None = None) -> dict:
    """Every row of Table 1 whose folder exists (row name -> folder), in the table's order.

    pruned_on: the prompts P the Wanda model was pruned on; its rows are over the others,
    and once more over P.
    scores: ``table_scores`` of every prompt when already measured (by the processes of a launch).
    """
    if scores is None:
        scores = table_scores(folders, quality_folders, originals, captions, quality_captions, measures)
    rows = {}
    for table_row in table_rows():
        name = table_row.name
        if name not in folders:
            continue
        pruned = table_row.model == WANDA
        subsets = {name: set(captions) - set(pruned_on) if pruned else set(captions)}
        if pruned and pruned_on:
            subsets[name + IN_P] = set(pruned_on)
        counts = neurons if table_row.neurons else {prompt: 0 for prompt in neurons}
        for subset, prompts in subsets.items():
            row = folder_row({p: values for p, values in scores["rows"][name].items() if p in prompts}, types, measures)
            row["neurons"] = _median_table({p: c for p, c in counts.items() if p in prompts}, types)
            row["cost"] = folder_cost(folders[name])
            rows[subset] = row
        if name in scores["quality"]:
            rows[name]["quality"] = quality_summary(scores["quality"][name])
        if name in quality_folders and measures.image_quality:
            rows[name]["image_quality"] = image_quality_score(quality_folders[name], quality_captions, measures)
    columns = ["neurons"] + score_columns(measures)
    quality = f"{measures.align_name} (held-out prompts)" if quality_folders and measures.align else None
    image_quality = f"{measures.quality_name} (held-out prompts)" if quality_folders and measures.image_quality else None
    return dict(columns=columns, rows=rows, notes=list(measures.notes), quality_column=quality,
                image_quality_column=image_quality)


def _cell(groups: dict | None, kinds: tuple[str, ...], spec: str = ".2f") -> str:
    if not groups:
        return "-"
    if not any(k in groups for k in kinds):
        return format(groups[OVERALL].get("median", groups[OVERALL].get("mean")), spec)
    return " / ".join(format(groups[k].get("median", groups[k].get("mean")), spec) if k in groups else "-"
                      for k in kinds)


def markdown(table: dict, title: str) -> str:
    """Table 1 as Markdown: median over prompts, VM / TM."""
    kinds = ("VM", "TM")
    extra = [table["quality_column"], table.get("image_quality_column")]
    columns = table["columns"] + [c for c in extra if c]
    lines = [f"### {title}", "", "| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table["rows"].items():
        cells = [_cell(row.get(c), kinds, "g" if c == "neurons" else ".2f") for c in table["columns"]]
        if table["quality_column"]:
            cells.append(_cell(row.get("quality"), kinds))
        if table.get("image_quality_column"):
            cells.append(_cell(row.get("image_quality"), kinds))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Median over prompts, VM / TM; Copy_* are shares of all images." +
              "".join(f" {note}." for note in table["notes"])]
    return "\n".join(lines) + "\n"


def write_grids(report: dict, folders: dict[str, str], originals: dict[int, str], captions: dict[int, str],
                types: dict[int, str], measures: Measures, output: str, per_row: int = 2) -> list[str]:
    """One PNG per memorization type: a row per prompt with its original and the first
    ``per_row`` images of every row, each captioned with its nearest reference and
    the similarity (coloured when it copies its own original or another one)."""
    threshold = measures.references.threshold if measures.references else None
    nearest = {}  # row -> prompt -> [[reference, similarity], ...]
    for name, row in report["rows"].items():
        shown = name.removesuffix(IN_P)
        for prompt, values in row.get("nearest", {}).items():
            nearest.setdefault(shown, {})[int(prompt)] = values
    rows_shown = [s for s in folders if s in report["rows"]]
    listed = {row: generated_images(folders[row]) for row in rows_shown}  # listed once
    generated = generated_images(folders[PLAIN])
    written = []
    for kind in sorted(set(types.values()) or {OVERALL}):
        prompts = sorted(p for p in generated if types.get(p, OVERALL) == kind)
        rows = []
        for prompt in prompts:
            cells = [(load_images([originals[prompt]])[0] if prompt in originals else None, "original", None)]
            for row in rows_shown:
                paths = listed[row].get(prompt, [])[:per_row]
                for j, image in enumerate(load_images(paths)):
                    reference, similarity = nearest.get(row, {}).get(prompt, [[None, None]] * (j + 1))[j]
                    copies = None
                    if threshold is not None and similarity is not None and similarity > threshold:
                        copies = "own" if reference == measures.own_reference.get(prompt) else "other"
                    caption = "" if reference is None else f"{reference} {similarity:.2f}"
                    cells.append((image, caption, copies))
            rows.append((f"{prompt}: {captions[prompt]}", cells))
        if rows:
            title = (f"{kind} prompts: original, then {per_row} images per row, each with its nearest reference "
                     f"and similarity (orange: copies its own original, red: another one, above {threshold})")
            groups = [("original", 1)] + [(s, per_row) for s in rows_shown]
            written.append(image_grid(title, groups, rows, os.path.join(output, f"grid_{kind}.png")))
    return written


# Markdown sections beside the table (6_reproduce_table1.py).

def detection_markdown(figures: dict) -> str:
    lines = ["### Detection of memorized prompts", "",
             "| score | prompts | AUROC | TPR@1%FPR | accuracy at its tau | seconds per prompt |", "|---|---|---|---|---|---|"]
    for name, groups in figures.items():
        for group, f in groups.items():
            seconds = f.get("seconds_per_prompt")
            lines.append(f"| {name} | {group} | {f['auroc']:.3f} | {f['tpr_at_1_fpr']:.3f} | "
                         f"{f['accuracy_at_threshold']:.3f} | {'' if seconds is None else f'{seconds:.3f}'} |")
    return "\n".join(lines) + "\n"


def attack_markdown(summaries: dict, kind: str) -> str:
    """One row per mitigation, and per memorization type where the attacked prompts have several."""
    lines = [f"### The Dori attack on every mitigation ({kind} prompts; script 8)", "",
             "| mitigation | prompts | replicated before | replicated after the attack | median best similarity "
             "before -> after | median L2 to the prompt's embedding | median cosine |", "|---|---|---|---|---|---|---|"]
    for name, groups in summaries.items():
        types = [g for g in groups if g != "overall"]
        for group in ["overall"] + (types if len(types) > 1 else []):
            f = groups[group]
            label = name if group == "overall" else f"{name}, {group}"
            lines.append(f"| {label} | {f['prompts']} | {f['replicated_before']:.2f} | {f['replicated_after']:.2f} | "
                         f"{f['median_similarity_before']:.2f} -> {f['median_similarity_after']:.2f} | "
                         f"{f['median_l2']:.2f} | {f['median_cosine']:.3f} |")
    return "\n".join(lines) + "\n"


def cost_markdown(rows: dict, localization_cost: dict, pruning: dict | None, finetuning: dict | None) -> str:
    lines = ["### Cost (median per prompt; per image: the mitigation's and the generation's U-Net passes together)", "",
             "| row | generation s | mitigation s | mitigation U-Net sample-forwards | U-Net forwards per image "
             "| U-Net backwards per image | s per image |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for name, row in rows.items():
        if name.endswith(IN_P):
            continue  # the same run as the row above it
        cost = row["cost"]
        extra_s, extra_f = fmt(cost.get("mitigation_seconds"), ".2f"), fmt(cost.get("mitigation_unet_sample_forwards"), ".0f")
        if name.startswith("NeMo"):
            extra_s, extra_f = fmt(localization_cost["seconds"], ".2f"), fmt(localization_cost["forwards"], ".0f")
        elif name.startswith("Wanda") and pruning:
            extra_s = f"{pruning['seconds']:.2f} once for the model"
            extra_f = f"{pruning['unet_sample_forwards']} once ({len(pruning['rows'])} prompts in P)"
        elif name == "adversarial fine-tuning" and finetuning:
            extra_s = f"{finetuning['seconds']:.1f} once for the model ({finetuning['updates']} updates)"
        lines.append(f"| {name} | {fmt(cost.get('seconds'), '.2f')} | {extra_s} | {extra_f} | "
                     f"{fmt(cost.get('image_unet_sample_forwards'), '.0f')} | "
                     f"{fmt(cost.get('image_unet_sample_backwards'), '.0f')} | {fmt(cost.get('image_seconds'), '.3f')} |")
    return "\n".join(lines) + "\n"


def agreement_markdown(agreement: dict) -> str:
    lines = ["### NeMo and Wanda on the same prompts (experiments/locality.py)", "",
             f"Share of each method's mitigation ({agreement['column']}) that is left once the other is applied; "
             "0: the other already removed it, 1: they act on different parts.", "",
             "| share left | prompts | median | n |", "|---|---|---|---|"]
    for name, label in (("nemo_left_on_pruned", "NeMo's, on the Wanda-pruned model"),
                        ("wanda_left_with_nemo", "Wanda's, with NeMo's neurons off")):
        for group, figures in agreement[name].items():
            lines.append(f"| {label} | {group} | {figures['overall']['median']:.2f} | {figures['overall']['n']} |")
    return "\n".join(lines) + "\n"
