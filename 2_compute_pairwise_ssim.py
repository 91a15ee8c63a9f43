"""Script 2: memorization score of each prompt and the threshold tau_mem (SPEC §3).

Score (--score nemo): max pairwise MS-SSIM of the first-step noise differences of
--samples_per_prompt seeds. With --score wen: Wen et al.'s magnitude of the text-conditional
noise prediction, averaged over the steps of a guided generation and its samples, so the two
detectors can be compared on the same prompt files. Rows are written as each prompt
finishes; at the end the threshold mean + 1 std over the prompts is printed and saved beside
the output. Run it on non-memorized prompts to calibrate tau_mem (paper: 0.428), on
memorized ones for detection (metrics.detection).
"""

import logging

from utils import cli, defaults

logger = logging.getLogger("2_compute_pairwise_ssim")
SCORE_COLUMNS = ["Caption", "Memorization Score", "Sample Scores"]


def memorization_threshold(scores) -> float:
    """tau_mem = mean + 1 std (unbiased) of the per-prompt scores (SPEC §3)."""
    import torch

    scores = torch.as_tensor(list(scores), dtype=torch.float64)
    return (scores.mean() + scores.std()).item()


def main(argv=None) -> float | None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("--prompts", default="prompts/unmemorized_laion_prompts.csv",
                        help="prompt file (';'-separated, column Caption)")
    parser.add_argument("--output", default="results/pairwise_ssim_per_prompt.csv",
                        help="per-prompt scores (';' CSV); the threshold goes to <output>.threshold.json")
    parser.add_argument("--score", choices=("nemo", "wen"), default="nemo",
                        help="nemo: NeMo's SSIM score (SPEC §3); wen: Wen et al.'s noise-prediction magnitude")
    cli.add_model_args(parser)
    cli.add_detection_args(parser)
    parser.add_argument("--batch_size", type=cli.positive_int, default=defaults.PAIRWISE_SSIM_BATCH_SIZE,
                        help="--score nemo: pairs per MS-SSIM batch (authors' script 2: 45, all pairs of 10 "
                             "samples); a pair's score depends on its batch through the data range")
    group = parser.add_argument_group("--score wen (defaults: YuxinWenRick/diffusion_memorization detect_mem.py and "
                                      "examples/det_mem_viz.ipynb)")
    group.add_argument("--wen_samples", type=cli.positive_int, default=defaults.WEN_SCORE_SAMPLES,
                       help="generations per prompt")
    group.add_argument("--wen_guidance_scale", type=float, default=defaults.WEN_SCORE_GUIDANCE_SCALE,
                       help="guidance of the generations")
    group.add_argument("--wen_score_steps", type=cli.positive_int, default=defaults.WEN_SCORE_STEPS,
                       help="the score averages the first N of the --num_inference_steps steps")
    cli.add_run_args(parser)
    args = cli.parse(parser, argv)

    import torch
    from tqdm import tqdm

    from metrics.core import MEMORIZATION_TYPES
    from utils.methods.wen import noise_magnitude as wen
    from utils.diffusion import encode_prompts, initial_latents
    from utils.distributed import Shard
    from utils.files import RowWriter, merge_rows, numeric_columns, read_csv, read_prompts, threshold_path
    from utils.models import load_detection_model
    from utils.methods.nemo.noise import prompt_noise_difference
    from utils.methods.nemo.score import pairwise_max_scores
    from utils.outputs import write_json

    frame = read_prompts(args.prompts)
    prompts = frame["Caption"].tolist()
    shard = Shard.from_env()
    if args.score == "nemo" and args.samples_per_prompt < 2:
        raise ValueError(f"--samples_per_prompt {args.samples_per_prompt}: the pairwise score needs at least 2")
    if min(len(prompts), args.limit or len(prompts)) < 2:
        raise ValueError(f"{args.prompts} with --limit {args.limit}: mean + 1 std needs at least 2 prompts")
    memorized = "type" in frame and frame["type"].isin(MEMORIZATION_TYPES).any()
    pipe, layers, shape = load_detection_model(args)
    samples = args.wen_samples if args.score == "wen" else args.samples_per_prompt
    latents = initial_latents(args.seed, samples, shape)  # [n, 4, h, w]

    def sample_scores(prompt: str) -> "torch.Tensor":
        """Per-sample scores [n]; the prompt's score is their max (nemo) or mean (wen)."""
        if args.score == "wen":
            embedding = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt])
            return wen.noise_magnitude_scores(pipe, embedding, latents, steps=args.num_inference_steps,
                                              guidance_scale=args.wen_guidance_scale, score_steps=args.wen_score_steps)
        noise = prompt_noise_difference(pipe, layers, prompt, num_inference_steps=args.num_inference_steps,
                                        timestep_index=args.timestep_index, guidance_scale=args.guidance_scale)
        return pairwise_max_scores(noise(latents)[0], args.ssim_kernel_size, args.batch_size)

    # every input is checked: only now is the output touched (an earlier run's is continued or refused)
    threshold_file = threshold_path(args.output)
    settings = cli.run_settings(args, inputs=("prompts",), batch_size=args.batch_size)  # it changes the scores
    with RowWriter(shard.part(args.output), SCORE_COLUMNS, settings, args.overwrite,
                   companions=(threshold_file,)) as writer:
        for i in tqdm(cli.pending(shard, len(prompts), writer.done, args.limit), desc="scoring", unit="prompt"):
            per_sample = sample_scores(prompts[i])
            score = per_sample.mean() if args.score == "wen" else per_sample.max()
            writer.write(i, {"Caption": prompts[i], "Memorization Score": score.item(),
                          "Sample Scores": [round(s, 6) for s in per_sample.tolist()]})
    if not shard.finish(args.output, merge_rows):
        return None  # another process merges and reports
    frame = read_csv(args.output, tuple(SCORE_COLUMNS), "score file")
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


if __name__ == "__main__":
    cli.run(main)
