"""Script 2's step: a registered detector's memorization score for every prompt of a file,
and mean + 1 std of the scores (tau_mem on non-memorized prompts, SPEC §3)."""

from __future__ import annotations

import time

from utils import cli
from utils.methods import DETECTORS
from utils.methods.nemo import options as nemo_options

SCORE_COLUMNS = ["Caption", "Memorization Score", "Sample Scores", "Seconds"]
AGGREGATES = {"max": lambda scores: scores.max(), "mean": lambda scores: scores.mean()}


def add_args(parser) -> None:
    """Script 2's flags: its own, the noise settings and every registered detector's settings."""
    parser.add_argument("--prompts", default="prompts/unmemorized_laion_prompts.csv",
                        help="prompt file (';'-separated, column Caption)")
    parser.add_argument("--output", default="results/pairwise_ssim_per_prompt.csv",
                        help="per-prompt scores (';' CSV); the threshold goes to <output>.threshold.json")
    parser.add_argument("--score", choices=tuple(DETECTORS), default="nemo",
                        help="; ".join(f"{d.name}: {d.help}" for d in DETECTORS.values()))
    cli.add_model_args(parser)
    nemo_options.add_detection_args(parser)
    for detector in DETECTORS.values():
        if detector.add_options:
            detector.add_options(parser)
    cli.add_run_args(parser)


def memorization_threshold(scores) -> float:
    """tau_mem = mean + 1 std (unbiased) of the per-prompt scores (SPEC §3)."""
    import torch

    scores = torch.as_tensor(list(scores), dtype=torch.float64)
    return (scores.mean() + scores.std()).item()


def cost(args):
    """Script 2's work for its flags (a ``utils.cost.Work``): the prompts up to --limit that
    --output does not hold yet, each its detector's registered U-Net calls."""
    from utils.cost import Work
    from utils.files import read_prompts, written_rows
    from utils.methods.registry import load

    detector = DETECTORS[args.score]
    total = len(read_prompts(args.prompts)[: args.limit])
    pending = total - len(set(written_rows(args.output).index) & set(range(total)))
    if detector.cost is None:
        return Work(pending, loads=1, estimate=f"{detector.name}: no U-Net calls declared (registry cost)")
    return Work(pending, passes=[p.times(pending) for p in load(detector.cost)(args)], loads=1)


def run(args) -> float | None:
    """Score every prompt into ``args.output``; returns the threshold (None in a process that
    leaves the merge to another)."""
    from tqdm import tqdm

    from metrics.core import MEMORIZATION_TYPES
    from utils.diffusion import initial_latents
    from utils.distributed import Shard
    from utils.files import RowWriter, merge_rows, numeric_columns, read_csv, read_prompts, threshold_path
    from utils.methods.nemo.noise import load_detection_model
    from utils.methods.registry import load
    from utils.outputs import write_json

    detector = DETECTORS[args.score]
    frame = read_prompts(args.prompts)
    prompts = frame["Caption"].tolist()
    shard = Shard.from_env()
    samples = getattr(args, detector.samples)
    if detector.aggregate == "max" and samples < 2:
        raise ValueError(f"--{detector.samples} {samples}: the pairwise score needs at least 2")
    if min(len(prompts), args.limit or len(prompts)) < 2:
        raise ValueError(f"{args.prompts} with --limit {args.limit}: mean + 1 std needs at least 2 prompts")
    memorized = "type" in frame and frame["type"].isin(MEMORIZATION_TYPES).any()
    pipe, layers, shape = load_detection_model(args)
    latents = initial_latents(args.seed, samples, shape)  # [n, 4, h, w]
    score = load(detector.score)

    # every input is checked: only now is the output touched (an earlier run's is continued or refused)
    threshold_file = threshold_path(args.output)
    settings = cli.run_record(args, inputs=("prompts",), batch_size=args.batch_size)  # it changes the scores
    with RowWriter(shard.part(args.output), SCORE_COLUMNS, settings, args.overwrite,
                   companions=(threshold_file,)) as writer:
        for i in tqdm(cli.pending(shard, len(prompts), writer.done, args.limit), desc="scoring", unit="prompt"):
            start = time.perf_counter()
            per_sample = score(pipe, layers, latents, args, prompts[i])  # [n]
            writer.write(i, {"Caption": prompts[i], "Memorization Score": AGGREGATES[detector.aggregate](per_sample).item(),
                             "Sample Scores": [round(s, 6) for s in per_sample.tolist()],
                             "Seconds": round(time.perf_counter() - start, 3)})
    if not shard.finish(args.output, merge_rows):
        return None  # another process merges and reports
    frame = read_csv(args.output, ("Caption", "Memorization Score"), "score file")
    scores = numeric_columns(frame, ("Memorization Score",), args.output, "score file")["Memorization Score"]
    threshold = memorization_threshold(scores)
    write_json(threshold_file, dict(threshold=threshold, mean=float(scores.mean()), std=float(scores.std()),
                                    num_prompts=len(scores), memorized_prompts=bool(memorized)))
    if memorized:  # a memorized file gives detection scores; its mean + 1 std is no tau_mem
        print(f"{args.score} scores of {len(scores)} memorized prompts: mean {scores.mean():.4f}, std "
              f"{scores.std():.4f}, median {scores.median():.4f} (detection: python -m metrics.detection)")
    else:
        print(f"memorization threshold tau_mem ({args.score} score, mean + 1 std of {len(scores)} "
              f"non-memorized prompts): {threshold:.4f}")
    return threshold
