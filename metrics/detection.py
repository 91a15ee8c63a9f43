"""Detection of memorized prompts by their memorization score (paper, App. B.4; SPEC §6).

Reads script 2's per-prompt score files of memorized and of non-memorized prompts and
reports AUROC, accuracy at 0.5 and at the calibrated threshold tau_mem, and TPR at 1% FPR:
over all memorized prompts and over the verbatim-memorized (VM) ones only, which needs the
memorized prompt file's type column. tau_mem is --threshold, or read from --threshold-file
(script 2 writes it beside the non-memorized scores).
"""

from __future__ import annotations

import logging
import os

import pandas as pd
import torch

from metrics import cli
from metrics.core import OVERALL, detection_metrics
from utils.cli import parse, parser_for, run
from utils.files import numeric_columns, read_csv, read_threshold, threshold_path

logger = logging.getLogger(__name__)
JSON_NAME = "detection.json"
SCORE_COLUMN = "Memorization Score"  # script 2's per-prompt score column
UNMEMORIZED_SCORES = "results/pairwise_ssim_per_prompt.csv"  # script 2's default output


def read_scores(path: str) -> pd.DataFrame:
    """A script 2 score file: one row per prompt, in prompt-file order."""
    frame = read_csv(path, ("Caption", SCORE_COLUMN), "score file")
    if frame.empty:
        raise ValueError(f"score file {path} has no rows")
    return numeric_columns(frame, (SCORE_COLUMN,), path, "score file")


def scores_of(frame: pd.DataFrame) -> torch.Tensor:
    """Memorization scores [n_prompts]."""
    return torch.tensor(frame[SCORE_COLUMN].tolist(), dtype=torch.float64)


def add_score_args(parser, required: bool = True) -> None:
    """Score files of script 2 and the threshold tau_mem."""
    parser.add_argument("-m", "--memorized", required=required, help="script 2 scores of the memorized prompts")
    parser.add_argument("-u", "--unmemorized", default=UNMEMORIZED_SCORES,
                        help="script 2 scores of the non-memorized prompts")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, default=None, help="calibrated threshold tau_mem")
    group.add_argument("--threshold-file", default=None,
                       help="JSON with key 'threshold'; default: <unmemorized>.threshold.json")


def threshold_from(args) -> float | None:
    """--threshold, else the threshold file's; None when the default file does not exist."""
    if args.threshold is not None:
        return args.threshold
    if args.threshold_file is None and not os.path.isfile(threshold_path(args.unmemorized)):
        return None
    return read_threshold(args.threshold_file or threshold_path(args.unmemorized))


def row_types(prompts: str, rows: pd.DataFrame, rows_path: str) -> list[str]:
    """Type of each row of a score or results file, from the prompt file it was computed on
    (same captions in the same order; the file may stop early)."""
    frame = read_csv(prompts, ("Caption", "type"))
    if len(rows) > len(frame):
        raise ValueError(f"{rows_path} has {len(rows)} rows but prompt file {prompts} only {len(frame)}")
    for i, caption in enumerate(rows["Caption"]):
        if caption != frame["Caption"][i]:
            raise ValueError(f"{rows_path} row {i} is {caption!r:.60} but prompt file {prompts} "
                             f"has {frame['Caption'][i]!r:.60}")
    return frame["type"][:len(rows)].tolist()


def main(argv=None) -> dict:
    parser = parser_for(__doc__)
    add_score_args(parser)
    parser.add_argument("-p", "--prompts", default=None,
                        help="memorized prompt file (column 'type') for the VM-only figures")
    cli.add_output_args(parser, f"<memorized dir>/{JSON_NAME}")
    args = parse(parser, argv)

    memorized_frame = read_scores(args.memorized)
    memorized, unmemorized = scores_of(memorized_frame), scores_of(read_scores(args.unmemorized))
    threshold = threshold_from(args)
    if threshold is None:
        raise ValueError(f"no threshold: {threshold_path(args.unmemorized)} not found; pass --threshold or "
                         "--threshold-file")
    groups = {OVERALL: memorized}
    if args.prompts:
        is_vm = torch.tensor([kind == "VM" for kind in row_types(args.prompts, memorized_frame, args.memorized)])
        if is_vm.any():
            groups["VM"] = memorized[is_vm]
    figures = {group: detection_metrics(scores, unmemorized, threshold) for group, scores in groups.items()}

    print(f"detection of memorized prompts, threshold {threshold:.4f}")
    print(f"{'group':<8} {'n':>5} {'AUROC':>7} {'acc@0.5':>8} {'acc@tau':>8} {'TPR@1%FPR':>10}")
    for group, f in figures.items():
        print(f"{group:<8} {f['memorized']:>5} {f['auroc']:>7.4f} {f['accuracy_at_0_5']:>8.4f} "
              f"{f['accuracy_at_threshold']:>8.4f} {f['tpr_at_1_fpr']:>10.4f}")
    payload = dict(metric="detection", memorized=args.memorized, unmemorized=args.unmemorized,
                   threshold=threshold, summary=figures)
    cli.write_json(cli.claim_json(args, args.output or os.path.join(os.path.dirname(args.memorized), JSON_NAME)), payload)
    return payload


if __name__ == "__main__":
    run(main)
