"""MS-SSIM between noise differences and the memorization scores built on it (SPEC §3)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from utils.cost import Passes
from utils.methods.nemo import SSIM_BETAS, SSIM_KERNEL_SIZE
from utils.methods.nemo.noise import prompt_noise_difference

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


def pairwise_max_scores(deltas: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE,
                        pairs_per_batch: int | None = None) -> torch.Tensor:
    """Per sample the maximum MS-SSIM over all pairs it is in: [n, 4, h, w] -> [n].

    The pairs, in ``torch.combinations`` order, go to MS-SSIM ``pairs_per_batch`` at a time
    (None: all in one batch), as the authors batch them: script 3's
    ``calculate_max_pairwise_ssim`` scores all pairs at once, script 2 ``--batch_size`` (45,
    all pairs of 10 samples) at a time. A score depends on its batch (see ``ms_ssim``).
    """
    n = deltas.shape[0]
    if n < 2:
        raise ValueError(f"the pairwise score needs at least 2 samples per prompt, got {n}")
    if pairs_per_batch is not None and pairs_per_batch < 1:
        raise ValueError(f"pairs_per_batch must be at least 1, got {pairs_per_batch}")
    i, j = torch.triu_indices(n, n, offset=1)  # the order of torch.combinations(arange(n), r=2)
    step = pairs_per_batch or len(i)
    pair_scores = torch.cat([ms_ssim(deltas[i[s:s + step]], deltas[j[s:s + step]], kernel_size).cpu()
                             for s in range(0, len(i), step)])
    per_sample = torch.full((n,), float("-inf"))
    per_sample = per_sample.scatter_reduce(0, i, pair_scores, "amax")
    return per_sample.scatter_reduce(0, j, pair_scores, "amax")


def memorization_score(deltas: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> float:
    """A prompt's memorization score: max pairwise MS-SSIM of its noise differences."""
    return pairwise_max_scores(deltas, kernel_size).max().item()


def blocked_scores(unblocked: torch.Tensor, blocked: torch.Tensor, kernel_size: int = SSIM_KERNEL_SIZE) -> torch.Tensor:
    """Per candidate set the max over samples of MS-SSIM(unblocked_i, blocked_i) (SPEC §4.1).

    unblocked [n, 4, h, w], blocked [sets, n, 4, h, w] -> [sets].
    """
    # one MS-SSIM batch per set, over the kept samples, as the authors compute it (see ms_ssim)
    return torch.stack([ms_ssim(unblocked, b, kernel_size).amax() for b in blocked]).cpu()


def score_cost(args) -> tuple[Passes, ...]:
    """Script 2's ``--score nemo`` per prompt: one U-Net call of all seeds (both halves with guidance)."""
    return (Passes(1, args.samples_per_prompt * (2 if args.guidance_scale > 0 else 1)),)


def prompt_scores(pipe, layers, latents: torch.Tensor, args, prompt: str) -> torch.Tensor:
    """Script 2's ``--score nemo``: per-seed max pairwise MS-SSIM [n] of the first-step noise
    differences of latents [n, 4, h, w] (SPEC §3)."""
    noise = prompt_noise_difference(pipe, layers, prompt, num_inference_steps=args.num_inference_steps,
                                    timestep_index=args.timestep_index, guidance_scale=args.guidance_scale)
    return pairwise_max_scores(noise(latents)[0], args.ssim_kernel_size, args.batch_size)
