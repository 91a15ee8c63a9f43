"""Loading a Stable Diffusion checkpoint: hub id, version alias or local diffusers folder."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from utils.defaults import DTYPES, MODEL_VERSIONS

logger = logging.getLogger(__name__)



class ModelNotFoundError(ValueError):
    """The checkpoint is neither a local folder nor loadable from the hub (or its cache)."""


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` if given, else cuda (this process's GPU under a launcher) when available, else cpu."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per launched process
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the paper's setting, SPEC §1), fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """--dtype: auto (or None) is ``default_dtype(device)``; float16, bfloat16, float32 as named."""
    if name in (None, "auto"):
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def model_source(version: str) -> str:
    """Hub id or folder for ``version`` (an alias of ``MODEL_VERSIONS``, a hub id or a path)."""
    return MODEL_VERSIONS.get(version, version)


def load_pipeline(version: str, device: torch.device, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """The checkpoint's pipeline on ``device`` with a DDIM scheduler and no safety checker."""
    source = model_source(version)
    dtype = dtype or default_dtype(device)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        where = "folder" if os.path.isdir(source) else "hub id"
        raise ModelNotFoundError(
            f"could not load model {version!r} ({where} {source!r}): {str(error).splitlines()[0]} "
            "-- without network access pass a local diffusers folder with -v/--version PATH"
        ) from error
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s on %s (%s)", source, device, dtype)
    return pipe.to(device)


def load_pipeline_from_args(args) -> StableDiffusionPipeline:
    """The pipeline of the flags of ``utils.cli.add_model_args`` (-v, --device, --dtype)."""
    device = resolve_device(args.device)
    return load_pipeline(args.version, device, resolve_dtype(args.dtype, device))


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``module`` requires a gradient inside the context, so a loss can be
    differentiated through it to an input (a text embedding) alone; flags restored on exit."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
