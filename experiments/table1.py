"""The Table-1 command's steps (``6_reproduce_table1.py``; the test bed's ``testbed.table1``):
it runs scripts 2, 3, 4, 7, 8 and 9 for every row and detector, then builds the table, its
figures and the cost, agreement, detection and attack tables from their outputs."""

from __future__ import annotations

import importlib
import logging
import os

from experiments import locality, report as table1
from metrics import plots
from metrics.cli import write_json
from metrics.copies import embedded_references
from metrics.embedders import CLIPEmbedder, image_embedder
from metrics.images import original_images
from experiments.rows import ALL_REFINED, FINETUNED, PLAIN, SETTINGS, WANDA, Setting, folder_name
from utils import cli
from utils.assets import sscd_copy_threshold
from utils.defaults import SSCD_COPY_THRESHOLD
from utils.files import read_csv, read_prompts, read_results
from utils.layers import count_neurons
from utils.models import resolve_device
from utils.outputs import claim_output, write_text
from utils.methods.nemo import selection

logger = logging.getLogger(__name__)
SCRIPTS = {2: "2_compute_pairwise_ssim", 3: "3_detect_memorized_neurons", 4: "4_generate_images",
           7: "7_prune_memorized_weights", 8: "8_attack_mitigation", 9: "9_adversarial_finetuning"}
# Detectors compared (script 2 --score): NeMo's, and Wen's at the authors' aggregation (all 50
# steps) and at the first step alone (their paper's cheapest variant).
DETECTORS = {"NeMo (SSIM score)": ("nemo", ["--score", "nemo"]),
             "Wen (noise magnitude, 50 steps)": ("wen", ["--score", "wen"]),
             "Wen (noise magnitude, first step)": ("wen_first_step", ["--score", "wen", "--wen_score_steps", "1"])}


def script(number: int):
    return importlib.import_module(SCRIPTS[number])


def chosen_settings(names: str | None, with_dori: bool) -> list[Setting]:
    if names is None:
        return [s for s in SETTINGS if with_dori or s.model != FINETUNED]
    wanted = [n.strip() for n in names.split(",")]
    known = {s.name: s for s in SETTINGS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"--settings: unknown row {unknown[0]!r}; rows are {list(known)}")
    if PLAIN not in wanted:
        wanted.insert(0, PLAIN)  # SSCD_Gen compares with it
    return [known[n] for n in wanted]


def model_flags(args) -> list[str]:
    """--device and --dtype of script 6, passed on to the scripts it runs (script 7 keeps its
    own float32 default: its folder is written in it)."""
    return [*(["--device", args.device] if args.device else []), "--dtype", args.dtype]


def pruned_model(args) -> tuple[str, dict]:
    """Script 7's Wanda-pruned model of the prompt file (made once: a rerun finds it complete);
    returns its folder and summary."""
    folder = os.path.join(args.output, "wanda_model")
    flags = ["-v", args.version, "-d", args.dataset, "-o", folder, "--sparsity", str(args.wanda_sparsity),
             "--subset_size", str(args.wanda_subset_size), "--subset_seed", str(args.wanda_subset_seed)]
    return folder, script(7).main([*flags, *(["--device", args.device] if args.device else [])])


def finetuned_model(args, results: str) -> tuple[str, dict]:
    """Script 9's adversarially fine-tuned model (made once: a rerun finds it complete)."""
    folder = os.path.join(args.output, "finetuned_model")
    flags = ["-v", args.version, "-d", args.dataset, "--originals", args.originals, "-f", results,
             "--utility_data", args.utility_data, "-o", folder, "--epochs", str(args.finetune_epochs),
             "--learning_rate", str(args.finetune_learning_rate), "--attack_steps", str(args.attack_steps),
             "--utility_batch", str(args.finetune_utility_batch), "--utility_weight", str(args.finetune_utility_weight),
             "--empty_caption_share", str(args.finetune_empty_caption_share),
             "--distillation_weight", str(args.finetune_distillation_weight)]
    flags += ["--memorization_type", args.dori_type] if args.dori_type != "all" else []
    return folder, script(9).main([*flags, *model_flags(args)])


def run_attacks(args, results: str, models: dict[str, str], neuron_sets: dict[str, str] | None = None) -> dict:
    """Script 8 against every mitigation: its success rate per memorization type.
    neuron_sets: further rows, name -> a results file whose refined neurons are deactivated
    (e.g. the planted bed's ground truth), attacked on the given model after NeMo's."""
    targets = {"none": (models[""], []), "NeMo": (models[""], ["--neurons_from", results])}
    targets.update({name: (models[""], ["--neurons_from", path]) for name, path in (neuron_sets or {}).items()})
    if WANDA in models:
        targets["Wanda"] = (models[WANDA], [])
    if FINETUNED in models:
        targets["adversarial fine-tuning"] = (models[FINETUNED], [])
    summaries = {}
    for name, (model, extra) in targets.items():
        flags = ["-v", model, "-d", args.dataset, "--originals", args.originals, "--resume",
                 "-o", os.path.join(args.output, "attack", folder_name(name)), "--similarity",
                 args.attack_similarity, "--attack_steps", str(args.attack_steps), "-n", str(args.num_samples),
                 "--steps", str(args.steps), "-g", str(args.guidance_scale), "-s", str(args.seed), *extra]
        flags += ["--memorization_type", args.dori_type] if args.dori_type != "all" else []
        flags += ["--sscd-model", args.sscd_model] if args.attack_similarity == "sscd" else []
        summaries[name] = script(8).main([*flags, *model_flags(args)])
    return summaries


def run_settings(args, results: str, settings: list[Setting], neurons: dict[int, list],
                 models: dict[str, str]) -> tuple[dict, dict]:
    """Script 4 for every setting (and its quality run); returns the image folders by setting.
    models: "" -> the given model, and the models scripts 7 and 9 made."""
    device = model_flags(args)
    generation = ["--steps", str(args.steps), "-n", str(args.num_samples), "-g", str(args.guidance_scale),
                  "-s", str(args.seed), "-b", str(args.batch_size), *device]
    if args.wen_target_loss is not None:
        generation += ["--wen_target_loss", str(args.wen_target_loss)]
    limit = ["--limit", str(args.limit)] if args.limit else []
    all_refined = str(len(selection.neuron_frequencies(list(neurons.values()))))
    folders, quality = {}, {}
    for setting in settings:
        model = ["-v", models[setting.model]]
        folders[setting.name] = os.path.join(args.output, "images", folder_name(setting.name))
        script(4).main(["-f", results, "-d", args.dataset, "-o", folders[setting.name], *model, *generation, *limit,
                        *setting.flags])
        if args.quality_prompts and setting.on_held_out:
            flags = [all_refined if f == ALL_REFINED else f for f in setting.quality_flags]
            quality[setting.name] = os.path.join(args.output, "quality", folder_name(setting.name))
            script(4).main(["-f", results, "--prompts", args.quality_prompts, "-o", quality[setting.name], *model,
                            *generation, *flags])
    return folders, quality


def run_detection(args) -> dict:
    """Both detectors on the memorized and the non-memorized prompts (script 2, resumed)."""
    from metrics import detection

    model = ["-v", args.version, "--ssim_kernel_size", str(args.ssim_kernel_size)]
    model += model_flags(args)
    figures = {}
    for name, (stem, flags) in DETECTORS.items():
        files = {}
        for label, prompts in (("memorized", args.dataset), ("unmemorized", args.unmemorized_prompts)):
            files[label] = os.path.join(args.output, "detection", f"{stem}_{label}.csv")
            script(2).main(["--prompts", prompts, "--output", files[label], "--resume", *flags, *model])
        figures[name] = detection.main(["-m", files["memorized"], "-u", files["unmemorized"], "-p", args.dataset,
                                        "-o", os.path.join(args.output, "detection", f"{stem}.json")])["summary"]
    return figures


# Flags of the table command that change no step's output: rows are folders of their own.
TABLE_FREE_FLAGS = ("settings",)


def claim_table_folder(args, output: str) -> None:
    """The table's folder, for these settings (``settings.json``): a rerun continues every step,
    other settings are refused, --overwrite clears the folder."""
    settings = {k: v for k, v in cli.run_settings(args).items() if k not in TABLE_FREE_FLAGS}
    if claim_output(output, settings, args.overwrite, folder=True):
        logger.warning("%s: continuing a run with the same settings (finished steps are kept)", output)


def reproduce(args, measures: table1.Measures, title: str, claim: bool = True,
              attack_neuron_sets: dict[str, str] | None = None) -> dict:
    """Every step of the table; ``measures`` decide its columns. ``claim``: check and record
    the output folder's settings here (False: the caller has). ``attack_neuron_sets``: with
    --dori, further neuron sets to attack (``run_attacks``)."""
    settings = chosen_settings(args.settings, args.dori)
    if args.dori and not (args.originals and args.utility_data):
        raise ValueError("--dori needs --originals (the images to attack and erase) and --utility_data")
    for path in (args.dataset, args.quality_prompts, args.unmemorized_prompts):
        if path:
            read_prompts(path)  # every input is checked before hours of work, not after
    if args.utility_data:
        read_csv(args.utility_data, ("Caption", "Image"), "utility data file")
    if claim:
        claim_table_folder(args, args.output)
    results = cli.versioned_path(os.path.join(args.output, "memorization_statistics.csv"), args.version)
    script(3).main(["-v", args.version, "-d", args.dataset, "-o", os.path.join(args.output, "memorization_statistics.csv"),
                    "--statistics", args.statistics, "--resume", "--memorization_threshold",
                    str(args.memorization_threshold), "--ssim_kernel_size", str(args.ssim_kernel_size),
                    *(["--limit", str(args.limit)] if args.limit else []), *(["--smoke"] if args.smoke else []),
                    *model_flags(args)])
    frame = read_results(results, None)
    refined = dict(enumerate(frame["Refined Neurons"]))
    models, pruning, finetuning = {"": args.version}, None, None
    if any(s.model == WANDA for s in settings):
        models[WANDA], pruning = pruned_model(args)
    if args.dori:
        models[FINETUNED], finetuning = finetuned_model(args, results)
    folders, quality = run_settings(args, results, settings, refined, models)

    prompts = read_prompts(args.dataset)
    types = dict(enumerate(prompts["type"])) if "type" in prompts else {}
    captions = dict(enumerate(prompts["Caption"]))
    quality_captions = dict(enumerate(read_prompts(args.quality_prompts)["Caption"])) if args.quality_prompts else {}
    originals = original_images(args.originals) if args.originals else {}
    report = table1.build_table(folders, quality, originals, captions, quality_captions, types,
                                {i: count_neurons(cell) for i, cell in refined.items()}, measures,
                                set(pruning["rows"]) if pruning else set())
    report["localization"] = {key: float(frame[column].median()) if column in frame else None
                              for key, column in (("seconds", "Seconds"), ("forwards", "UNet Sample Forwards"))}
    report["wanda"], report["finetuning"] = pruning, finetuning
    text = table1.markdown(report, title) + "\n" + table1.cost_markdown(report["rows"], report["localization"], pruning,
                                                                 finetuning)
    if all(name in report["rows"] for name in (locality.NEMO, locality.PRUNED, locality.BOTH)):
        agreement = locality.agreement_from(report, types, set(pruning["rows"]))
        agreement["figure"] = locality.agreement_figure(agreement, os.path.join(args.output, "nemo_wanda_agreement.png"))
        report["nemo_wanda_agreement"] = agreement
        text += "\n" + table1.agreement_markdown(agreement)
    report["figures"] = table1.write_grids(report, folders, originals, captions, types, measures, args.output)
    report["figures"].append(plots.neurons_per_layer(
        plots.neuron_counts(list(refined.values()), [types.get(i, "all") for i in refined])[1],
        os.path.join(args.output, "neurons_per_layer.png")))
    if args.unmemorized_prompts:
        report["detection"] = run_detection(args)
        text += "\n" + table1.detection_markdown(report["detection"])
        scores = {label: plots.scores_of(plots.read_scores(os.path.join(args.output, "detection", f"nemo_{label}.csv")))
                  for label in ("memorized", "unmemorized")}
        kinds = [types.get(i, "memorized") for i in range(len(scores["memorized"]))]
        series = {"non-memorized": scores["unmemorized"].numpy()}
        series.update({kind: scores["memorized"].numpy()[[k == kind for k in kinds]] for kind in sorted(set(kinds))})
        report["figures"].append(plots.score_distributions(series, args.memorization_threshold,
                                                           os.path.join(args.output, "memorization_scores.png")))
    if args.dori:
        report["attack"] = run_attacks(args, results, models, attack_neuron_sets)
        text += "\n" + table1.attack_markdown(report["attack"], args.dori_type)
    text += "\nFigures: " + ", ".join(os.path.basename(f) for f in report["figures"]) + "\n"
    write_json(os.path.join(args.output, "table1.json"), report)
    write_text(os.path.join(args.output, "table1.md"), text)
    print("\n" + text)
    return report


def paper_measures(args) -> table1.Measures:
    """The paper's columns (SSCD or a stand-in embedder, CLIP) and the nearest-copy references."""
    device = resolve_device(args.device)
    embedder = image_embedder(args.embedder, device, args.sscd_model, args.clip_model)
    measures = table1.embedder_measures(embedder, None if args.clip_model == "none" else CLIPEmbedder(args.clip_model, device))
    folder = args.references or args.originals
    if folder:
        paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                 if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))] if os.path.isdir(folder) else []
        if not paths:
            raise ValueError(f"reference folder {folder} has no images (.png, .jpg, .jpeg, .webp)")
        threshold = args.copy_threshold
        if threshold is None:
            threshold = sscd_copy_threshold(embedder.checkpoint) if embedder.name == "sscd" else SSCD_COPY_THRESHOLD
        measures.references = embedded_references(embedder, paths, [os.path.basename(p) for p in paths], threshold)
        originals = original_images(args.originals) if args.originals else {}
        measures.own_reference = {prompt: os.path.basename(path) for prompt, path in originals.items()}
        measures.notes.append(f"Nearest and Copy_* compare each image with the {len(paths)} images of {folder}, "
                              f"a copy above {threshold}")
    return measures
