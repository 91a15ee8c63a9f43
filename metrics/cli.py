"""Flag groups and reporting shared by the metric command lines (``python -m metrics.<name>``).

Each command prints a small table and writes the same figures as JSON (by default beside
the images), so a table builder reads files rather than logs.
"""

from __future__ import annotations

import argparse
import logging
import os

import pandas as pd
import torch
from tqdm import tqdm

from metrics.core import summarize
from metrics.embedders import EMBEDDERS, image_embedder
from utils import outputs
from utils.cli import add_sscd_model_arg, run_record
from utils.defaults import CLIP_MODEL
from utils.files import read_prompts
from utils.models import resolve_device

logger = logging.getLogger(__name__)


def add_clip_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip-model", default=CLIP_MODEL,
                        help="CLIP ViT-B/32: hub id or local folder with CLIPModel + its tokenizer")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")


def add_embedder_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image embedder")
    group.add_argument("--embedder", choices=EMBEDDERS, default="sscd",
                       help="sscd: the paper's copy detector; pixel: weight-free stand-in for the built-in "
                            "test bed and the tests; clip: CLIP image embeddings")
    add_sscd_model_arg(group)
    add_clip_args(group)
    add_device_args(group)


def add_prompt_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("-p", "--prompts", required=required, default=None,
                        help="prompt file the images were generated from (';' CSV); its 'type' column "
                             "(VM/TM) splits the figures" + ("" if required else "; without it: overall only"))


def add_output_args(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", default=None, help=f"JSON of the figures; default: {default}")
    parser.add_argument("--overwrite", action="store_true",
                        help="ours: replace a JSON made with other settings instead of refusing")
    parser.add_argument("--log-level", "--log_level", dest="log_level", default="INFO", help="logging level")


def claim_json(args: argparse.Namespace, path: str) -> str:
    """``path``, checked to hold no figures of other settings (its ``.settings.json``); a rerun
    with the same settings recomputes it, --overwrite replaces one of other settings."""
    outputs.claim_output(path, run_record(args), args.overwrite)
    return path


def embedder_from(args: argparse.Namespace):
    return image_embedder(args.embedder, resolve_device(args.device), args.sscd_model, args.clip_model)


def prompt_rows(path: str, prompts: list[int]) -> pd.DataFrame:
    """The prompt file, checked to have a row for every image prompt index."""
    frame = read_prompts(path)
    beyond = [i for i in prompts if i >= len(frame)]
    if beyond:
        raise ValueError(f"images of prompt {beyond[0]} but prompt file {path} has {len(frame)} rows")
    return frame


def types_of(frame: pd.DataFrame, prompts: list[int], path: str) -> dict[int, str]:
    """Memorization type of each prompt index; empty when the file has no ``type`` column."""
    if "type" not in frame:
        logger.info("prompt file %s has no 'type' column: figures over all prompts only", path)
        return {}
    return {i: frame["type"][i] for i in prompts}


def prompt_types(path: str | None, prompts: list[int]) -> dict[int, str]:
    """Memorization type of each prompt index; empty without a prompt file."""
    return {} if path is None else types_of(prompt_rows(path, prompts), prompts, path)


def write_json(path: str, payload: dict) -> None:
    """Written atomically (``utils.outputs.write_json``)."""
    outputs.write_json(path, payload)
    logger.info("wrote %s", path)


def report(title: str, per_prompt: dict[int, dict[str, float]], types: dict[int, str], output: str,
           **details) -> dict:
    """Median ± MAD of each per-prompt statistic, overall and per type: printed as a table
    and written to ``output`` as JSON with ``details`` and the per-prompt values."""
    if not per_prompt:
        raise ValueError(f"{title}: no prompt could be scored")
    statistics = list(next(iter(per_prompt.values())))
    summary = {name: summarize({i: values[name] for i, values in per_prompt.items()}, types)
               for name in statistics}
    print(title)
    print(f"{'statistic':<10} {'group':<8} {'n':>5}  median ± MAD")
    for name, groups in summary.items():
        for group, figures in groups.items():
            print(f"{name:<10} {group:<8} {figures['n']:>5}  {figures['median']:.4f} ± {figures['mad']:.4f}")
    payload = dict(details, summary=summary, per_prompt={str(i): values for i, values in per_prompt.items()})
    write_json(output, payload)
    return payload


def default_output(args: argparse.Namespace, name: str) -> str:
    """The JSON a command writes, claimed for its settings (``claim_json``)."""
    return claim_json(args, args.output or os.path.join(args.images, name))


@torch.no_grad()
def per_prompt_scores(images: dict[int, list], score) -> dict[int, dict[str, float]]:
    """``score(prompt, paths)`` -> {statistic: value} for each prompt, with a progress bar."""
    return {prompt: score(prompt, paths) for prompt, paths in tqdm(images.items(), desc="prompts", unit="prompt")}
