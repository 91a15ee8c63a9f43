"""MS-SSIM between noise differences and the memorization scores built on it (SPEC §3)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from utils.defaults import SSIM_BETAS, SSIM_KERNEL_SIZE

# torchmetrics' Gaussian window (sigma 1.5) is 11 wide whatever kernel_size says; it is
# reflect-padded by 5 pixels at every scale, so the coarsest scale must be wider than 5.
GAUSSIAN_PAD = 5


def check_ssim_size(side: int, kernel_size: int = SSIM_KERNEL_SIZE, scales: int = len(SSIM_BETAS)) -> None:
    """Raise a ValueError when a ``side``x``side`` latent is too small for MS-SSIM."""
    coarsest = side // 2 ** (scales - 1)
    if coarsest <= max(kernel_size - 1, GAUSSIAN_PAD):
        raise ValueError(
            f"latent of {side}x{side} is too small for MS-SSIM with --ssim_kernel_size {kernel_size} and "
            f"{scales} scales: the coarsest scale is {coarsest} px, it must exceed {max(kernel_size - 1, GAUSSIAN_PAD)}"
        )


def ms_ssim(a: torch.Tensor, b: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> torch.Tensor:
    """MS-SSIM of each pair: a, b [n, channels, h, w] -> [n] (float32).

    torchmetrics takes the data range from the whole batch at every scale, so a pair's
    score depends on the batch it is in: callers keep the authors' batches.
    """
    check_ssim_size(min(a.shape[-2:]), kernel_size)
    return multiscale_structural_similarity_index_measure(
        a.float(), b.float(), kernel_size=kernel_size, betas=SSIM_BETAS, reduction="none"
    )


def pairwise_max_scores(deltas: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> torch.Tensor:
    """Per sample the maximum MS-SSIM over all pairs it is in: [n, 4, h, w] -> [n]."""
    n = deltas.shape[0]
    if n < 2:
        raise ValueError(f"the pairwise score needs at least 2 samples per prompt, got {n}")
    i, j = torch.triu_indices(n, n, offset=1)
    # each pair on its own, so a score does not depend on the other samples (see ms_ssim)
    pair_scores = torch.cat([ms_ssim(deltas[a:a + 1], deltas[b:b + 1], kernel_size) for a, b in zip(i, j)])
    per_sample = torch.full((n,), float("-inf"))
    per_sample = per_sample.scatter_reduce(0, i, pair_scores.cpu(), "amax")
    return per_sample.scatter_reduce(0, j, pair_scores.cpu(), "amax")


def memorization_score(deltas: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> float:
    """A prompt's memorization score: max pairwise MS-SSIM of its noise differences."""
    return pairwise_max_scores(deltas, kernel_size).max().item()


def blocked_scores(unblocked: torch.Tensor, blocked: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> torch.Tensor:
    """Per candidate set the max over samples of MS-SSIM(unblocked_i, blocked_i) (SPEC §4.1).

    unblocked [n, 4, h, w], blocked [sets, n, 4, h, w] -> [sets].
    """
    # one MS-SSIM batch per set, over the kept samples, as the authors compute it (see ms_ssim)
    return torch.stack([ms_ssim(unblocked, b, kernel_size).amax() for b in blocked]).cpu()
