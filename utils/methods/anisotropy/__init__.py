"""Asthana & Belagiannis (ICLR 2026): a memorization score from one pair of U-Net passes on
pure noise, no denoising, as script 2 ``--score anisotropy`` (a comparison of Table 1's
detection); the code in ``score``.

The score of initial latents x_T is gamma_1 * (the norm of the text-conditional difference of
the U-Net's output at the schedule's first timestep) + gamma_2 * (the cosine between the
unconditional output and that difference at a low-noise timestep, the anisotropy), both on
x_T itself. Defaults are the authors' (rohanasthana/memorization-anisotropy):
``run_detection.sh`` with ``detect_mem.py``'s flags, the score of ``local_model/pipe.py``
(``exp_type == 'det'``) and the weights of ``detect_eval.py``. Their repository's only
mitigation is SAIL's latent optimization, not the paper's, and is not here.
"""

from utils import cli
from utils.methods.registry import Detector, register

ANISOTROPY_SAMPLES = 1  # run_detection.sh gen_numbers=(1) (detect_mem.py --gen_num 1)
ANISOTROPY_SEED = 51  # run_detection.sh seeds=(51) (detect_mem.py --gen_seed 42), reseeded for every prompt
# pipe.py: the norm at timesteps[i] for i < --hvp_sampling_num (1: the first timestep, 981 of
# SD's 50-step DDIM schedule); the cosine at timesteps[-3] (41 there), both on x_T.
NORM_TIMESTEP_INDEX = 0
ALIGNMENT_TIMESTEP_INDEX = -3
# pipe.py's --mode: which cosine, "a,b" = cos(a, b) over the channels of each pixel, averaged
# over the pixels; x: the unconditional output, x|c: the conditional one, c|x: their difference.
ALIGNMENT_MODES = ("x,c|x", "x,x|c", "x|c,c|x")
ALIGNMENT_MODE = "x,c|x"  # run_detection.sh mode=("x,c|x") (detect_mem.py --mode)
# detect_eval.py: score = gamma_1 * norm + gamma_2 * cosine, by model. Their SD 1.4 (epsilon)
# and SD 2 (v-prediction) branches are keyed here by the scheduler's prediction type.
NORM_WEIGHTS = {"epsilon": 1.0, "v_prediction": 1.0}  # gamma_1 (sd_ver 1, sd_ver 2)
ALIGNMENT_WEIGHTS = {"epsilon": 2.0, "v_prediction": 0.1}  # gamma_2 (sd_ver 1, sd_ver 2)

SOURCE = "rohanasthana/memorization-anisotropy run_detection.sh, detect_mem.py, local_model/pipe.py, detect_eval.py"


def weights_by_model(weights: dict) -> str:
    return (f"{weights['epsilon']} on an epsilon model (their SD 1.4), "
            f"{weights['v_prediction']} on a v model (their SD 2)")


def add_options(parser) -> None:
    group = parser.add_argument_group(f"--score anisotropy (defaults: {SOURCE}; the schedule is "
                                      "--num_inference_steps, 50 as theirs)")
    group.add_argument("--anisotropy_samples", type=cli.positive_int, default=ANISOTROPY_SAMPLES,
                       help="initial latents per prompt; the prompt's score is the mean of theirs (--gen_num; "
                            "run_detection.sh: 1)")
    group.add_argument("--anisotropy_seed", type=int, default=ANISOTROPY_SEED,
                       help="seed of those latents, the same for every prompt, in place of -s/--seed (--gen_seed; "
                            "run_detection.sh: 51; drawn with the suite's CPU generator, theirs on CUDA in bfloat16)")
    group.add_argument("--anisotropy_norm_timestep_index", type=int, default=NORM_TIMESTEP_INDEX,
                       help="schedule index of the norm's timestep, negative from the end (pipe.py: the first, 0)")
    group.add_argument("--anisotropy_alignment_timestep_index", type=int, default=ALIGNMENT_TIMESTEP_INDEX,
                       help="schedule index of the cosine's timestep, negative from the end (pipe.py: timesteps[-3])")
    group.add_argument("--anisotropy_mode", choices=ALIGNMENT_MODES, default=ALIGNMENT_MODE, metavar="MODE",
                       help=f"the cosine's two vectors, one of {', '.join(map(repr, ALIGNMENT_MODES))}; x: the "
                            "unconditional output, x|c: the conditional one, c|x: their difference (--mode; "
                            "run_detection.sh: x,c|x)")
    group.add_argument("--anisotropy_norm_weight", type=float, default=None,
                       help=f"gamma_1, the norm's weight (detect_eval.py; default: {weights_by_model(NORM_WEIGHTS)})")
    group.add_argument("--anisotropy_alignment_weight", type=float, default=None,
                       help=f"gamma_2, the cosine's weight (detect_eval.py; default: "
                            f"{weights_by_model(ALIGNMENT_WEIGHTS)})")


register(Detector("anisotropy", "Asthana & Belagiannis's norm of the text-conditional difference plus its alignment "
                  "with the unconditional output at low noise, both on pure noise (no denoising)",
                  "utils.methods.anisotropy.score:prompt_scores", aggregate="mean", samples="anisotropy_samples",
                  add_options=add_options,
                  comparisons={"Anisotropy (Asthana & Belagiannis)": ("anisotropy", {})},
                  cost="utils.methods.anisotropy.score:score_cost"))
