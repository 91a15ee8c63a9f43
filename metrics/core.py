"""Pure maths of the metrics (SPEC §6): similarities, per-prompt reductions, summaries, detection.

Nothing here reads files. Medians are torch's lower median (the middle value for an odd
count, the smaller of the two middle values for an even count), as in the authors' metric
scripts, so our figures are comparable with theirs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEMORIZATION_TYPES = ("VM", "TM")  # verbatim and template memorization, column ``type`` (SPEC §6)
OVERALL = "overall"
DETECTION_THRESHOLD = 0.5  # accuracy at a fixed score of 0.5 (paper, App. B.4)
MAX_FPR = 0.01  # TPR at 1 % FPR (paper, App. B.4)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` [n, d] with every row of ``b`` [m, d]: [n, m]."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of row i of ``a`` [n, d] with row i of ``b`` [n, d]: [n]."""
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1)


def upper_triangle(matrix: torch.Tensor) -> torch.Tensor:
    """Entries above the diagonal of a square [n, n] matrix: [n (n - 1) / 2] (45 for n = 10)."""
    rows, cols = torch.triu_indices(len(matrix), len(matrix), offset=1)
    return matrix[rows, cols]


def median(values: torch.Tensor) -> float:
    """Lower median of a [n] tensor."""
    return values.median().item()


def median_mad(values: torch.Tensor) -> tuple[float, float]:
    """(median, median absolute deviation from it) of a [n] tensor."""
    middle = values.median()
    return middle.item(), (values - middle).abs().median().item()


# Per-prompt reductions; each takes one prompt's embeddings.

def sscd_orig_scores(original: torch.Tensor, generated: torch.Tensor) -> dict[str, float]:
    """SSCD_Orig of one prompt: max and median similarity of its generations [n, d] to the
    training image [d]."""
    similarities = cosine_matrix(original[None], generated)[0]  # [n]
    return dict(max=similarities.max().item(), median=median(similarities))


def sscd_gen_score(deactivated: torch.Tensor, reference: torch.Tensor) -> float:
    """SSCD_Gen of one prompt: median similarity of image j with deactivation [n, d] to image j
    without [n, d]."""
    return median(paired_cosine(deactivated, reference))


def diversity_score(generated: torch.Tensor) -> float:
    """D_SSCD of one prompt: median similarity over all pairs of its generations [n, d]."""
    return median(upper_triangle(cosine_matrix(generated, generated)))


def alignment_score(text: torch.Tensor, images: torch.Tensor) -> float:
    """A_CLIP of one prompt: median similarity of its images [n, d] to its caption [d]."""
    return median(cosine_matrix(text[None], images)[0])


def summarize(per_prompt: dict[int, float], types: dict[int, str]) -> dict[str, dict]:
    """Median ± MAD over prompts, overall and per memorization type present in ``types``.

    ``per_prompt`` maps prompt index to its value; ``types`` maps prompt index to ``VM``/``TM``
    (empty when the prompt file has no ``type`` column). Returns
    ``{group: {"median", "mad", "n"}}`` with group ``overall``, ``VM``, ``TM``.
    """
    groups = {OVERALL: list(per_prompt)}
    for kind in MEMORIZATION_TYPES:
        members = [i for i in per_prompt if types.get(i) == kind]
        if members:
            groups[kind] = members
    summary = {}
    for group, members in groups.items():
        middle, mad = median_mad(torch.tensor([per_prompt[i] for i in members], dtype=torch.float64))
        summary[group] = dict(median=middle, mad=mad, n=len(members))
    return summary


# Detection of memorized prompts from their memorization scores (paper, App. B.4).
# A prompt counts as memorized when its score exceeds the threshold (SPEC §4).

def auroc(memorized: torch.Tensor, unmemorized: torch.Tensor) -> float:
    """Area under the ROC curve of scores of memorized [p] vs. non-memorized [q] prompts:
    the chance that a memorized prompt scores higher than a non-memorized one, ties counting half."""
    difference = memorized.double()[:, None] - unmemorized.double()[None, :]  # [p, q]
    return ((difference > 0).double() + 0.5 * (difference == 0).double()).mean().item()


def accuracy_at(memorized: torch.Tensor, unmemorized: torch.Tensor, threshold: float) -> float:
    """Share of all prompts classified right when scores above ``threshold`` mean memorized."""
    correct = (memorized > threshold).sum() + (unmemorized <= threshold).sum()
    return correct.item() / (len(memorized) + len(unmemorized))


def tpr_at_fpr(memorized: torch.Tensor, unmemorized: torch.Tensor, max_fpr: float = MAX_FPR) -> float:
    """Highest true-positive rate over the thresholds whose false-positive rate is at most
    ``max_fpr`` (the ROC curve's points: every observed score as a threshold, score >= t)."""
    thresholds = torch.cat([memorized, unmemorized]).double().unique()  # [t]
    fpr = (unmemorized.double()[None, :] >= thresholds[:, None]).double().mean(1)  # [t]
    tpr = (memorized.double()[None, :] >= thresholds[:, None]).double().mean(1)  # [t]
    allowed = tpr[fpr <= max_fpr]
    return allowed.max().item() if len(allowed) else 0.0


def detection_metrics(memorized: torch.Tensor, unmemorized: torch.Tensor, threshold: float) -> dict[str, float]:
    """AUROC, accuracy at 0.5 and at the calibrated ``threshold``, TPR at 1 % FPR."""
    if not len(memorized) or not len(unmemorized):
        raise ValueError(f"detection needs scores of both kinds, got {len(memorized)} memorized "
                         f"and {len(unmemorized)} non-memorized prompts")
    return dict(auroc=auroc(memorized, unmemorized),
                accuracy_at_0_5=accuracy_at(memorized, unmemorized, DETECTION_THRESHOLD),
                accuracy_at_threshold=accuracy_at(memorized, unmemorized, threshold),
                tpr_at_1_fpr=tpr_at_fpr(memorized, unmemorized),
                memorized=len(memorized), unmemorized=len(unmemorized))


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID (Bińkowski et al. 2018): the unbiased squared MMD between features ``a`` [n, d] and
    ``b`` [m, d] with the cubic polynomial kernel k(x, y) = (x . y / d + 1)^3, over all pairs
    (no random subsets, so the figure is deterministic). About 0 for samples of one
    distribution; it can be slightly negative."""
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs at least 2 feature rows of one width on each side, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    kernel = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3
    within = lambda x: (kernel(x, x).sum() - kernel(x, x).diagonal().sum()) / (len(x) * (len(x) - 1))
    return (within(a) + within(b) - 2 * kernel(a, b).mean()).item()
