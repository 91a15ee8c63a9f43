"""The asset catalogue: every file a run on Stable Diffusion reads that the repository does
not ship, where it comes from, where it goes, its SHA-256 and its licence.

Torch-free (``0_fetch_assets.py --help`` and ``--list`` answer at once). Hub models (SD,
CLIP) are not here: they live in the Hugging Face cache (README, "Assets").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from utils import defaults

UPSTREAM_REPO = "ml-research/localizing_memorization_in_diffusion_models"
UPSTREAM_BASE = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{defaults.UPSTREAM_COMMIT}/"
UPSTREAM_LICENCE = f"MIT (github.com/{UPSTREAM_REPO}/blob/{defaults.UPSTREAM_COMMIT[:7]}/LICENSE)"
SSCD_BASE = "https://dl.fbaipublicfiles.com/sscd-copy-detection/"
SSCD_LICENCE = "MIT (github.com/facebookresearch/sscd-copy-detection, README 'License')"
MIRROR_ENV = "NEMO_ASSET_MIRROR"  # a server with the same paths as the origins (tests, offline sites)
RECORDED_HASHES = "recorded_sha256.json"  # per folder: hashes of assets with no published one
TRAINING_IMAGES = "training_images"  # the name that fetches a prompt file's URL column


@dataclass(frozen=True)
class Asset:
    """One downloadable file; ``sha256`` None: none is published, recorded on first download."""

    name: str
    url: str
    destination: str  # relative to the repository root
    sha256: str | None
    licence: str
    what: str

    def source(self, mirror: str | None = None) -> str:
        """The URL to fetch: the origin, or the same path on ``mirror``."""
        return mirror_url(self.url, mirror)


def mirror_url(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror``'s (its path kept); unchanged without one."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _upstream(name: str, path: str, sha256: str | None, what: str) -> Asset:
    return Asset(name, UPSTREAM_BASE + path, path, sha256, UPSTREAM_LICENCE, what)


def _sscd(name: str, what: str) -> Asset:
    file = f"{name}.torchscript.pt"
    return Asset(name, SSCD_BASE + file, os.path.join(defaults.WEIGHTS_FOLDER, file), None, SSCD_LICENCE, what)


# SHA-256s computed from the authors' files at UPSTREAM_COMMIT (git show <commit>:<path> | sha256sum).
CATALOGUE: dict[str, Asset] = {asset.name: asset for asset in (
    _upstream("memorized_prompts", "prompts/memorized_laion_prompts.csv",
              "0b527a5965dc463e7a3e0d234ff7fd5489b1a76869c456dbb209dc753cb4af25",
              "the 500 memorized LAION prompts with URL and VM/TM type (scripts 3, 4, 6)"),
    _upstream("unmemorized_prompts", "prompts/unmemorized_laion_prompts.csv",
              "f453b418cc157864baacbf68d97447273feac41e8066b2ead6b307bf795988e1",
              "non-memorized LAION prompts (script 2's threshold, detection)"),
    _upstream("coco_prompts", "prompts/coco2014_val_10000.csv",
              "5445e449c60fd6b326a05c79a683c4d64620b0330a372de843eb6b9dbe5901e3",
              "10,000 COCO val2014 captions (FID, KID, CLIP-FID)"),
    _upstream("statistics_v1_4", "statistics/statistics_additional_laion_prompts_v1_4.pt",
              "42072d31334d50ce0d981f58865ab2ab378303c51e779c39f8505b681b0d1d9b",
              "SD v1.4 value-layer activation statistics (script 1's output, read by script 3)"),
    _upstream("additional_prompts", "prompts/additional_laion_prompts.csv", None,
              "the prompts script 1 computes statistics from (only to recompute statistics_v1_4)"),
    _sscd("sscd_disc_mixup", "SSCD ResNet-50 copy detector, 512-d (NeMo's metric scripts)"),
    _sscd("sscd_disc_large", "SSCD ResNeXt101 copy detector, 1024-d (Wen et al., Chavhan et al., MemBench)"),
)}
# What the README's SD v1.4 commands read (`make assets`).
SD14 = ("memorized_prompts", "unmemorized_prompts", "coco_prompts", "statistics_v1_4", "sscd_disc_mixup",
        TRAINING_IMAGES)
GROUPS = {"sd14": SD14, "all": (*CATALOGUE, TRAINING_IMAGES)}
NAMES = (*CATALOGUE, TRAINING_IMAGES, *GROUPS)


def select(names: list[str]) -> list[str]:
    """Asset names (groups expanded, order kept, each once); an unknown name is a ValueError."""
    chosen: list[str] = []
    for name in names:
        if name not in NAMES:
            raise ValueError(f"unknown asset {name!r}; expected one of {', '.join(NAMES)}")
        for member in GROUPS.get(name, (name,)):
            if member not in chosen:
                chosen.append(member)
    return chosen


def sscd_checkpoint(value: str, root: str = ".") -> tuple[str, str]:
    """``--sscd-model``: a checkpoint name (``sscd_disc_mixup``, ``sscd_disc_large``: the file
    ``0_fetch_assets.py`` puts in weights/) or a path to a TorchScript file -> (name, path).
    The name of a path is its file name without ``.torchscript.pt``."""
    if value in defaults.SSCD_CHECKPOINTS:
        return value, os.path.join(root, CATALOGUE[value].destination)
    name = os.path.basename(value).removesuffix(".pt").removesuffix(".torchscript")
    return name, value


def sscd_copy_threshold(name: str) -> float:
    """The copy threshold of an SSCD checkpoint (utils.defaults.SSCD_COPY_THRESHOLDS); a
    checkpoint without one is a ValueError asking for an explicit threshold."""
    if name not in defaults.SSCD_COPY_THRESHOLDS:
        raise ValueError(f"no default copy threshold for SSCD checkpoint {name!r} (known: "
                         f"{', '.join(defaults.SSCD_COPY_THRESHOLDS)}); pass --copy_threshold")
    return defaults.SSCD_COPY_THRESHOLDS[name]
