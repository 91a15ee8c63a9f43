"""Wen et al. (ICLR 2024): the magnitude of the text-conditional noise prediction, as a
memorization score (script 2 ``--score wen``) and as the objective of their inference-time
mitigation, prompt-embedding adjustment (script 4 ``--wen``, a row of Table 1); the code in
``noise_magnitude``.

Defaults are the authors' (YuxinWenRick/diffusion_memorization): the mitigation from
``inference_mem.py`` with their README's command, the score from ``detect_mem.py`` and the
aggregation of ``examples/det_mem_viz.ipynb``.
"""

from utils import cli
from utils.methods.registry import Detector, Mitigation, Row, register

# Mitigation (inference_mem.py flags; README: --optim_target_loss 3 --optim_target_steps 0).
WEN_LEARNING_RATE = 0.05  # --optim_lr, AdamW with torch's other defaults (weight decay 0.01)
WEN_MAX_ITERATIONS = 10  # --optim_iters: U-Net passes at most, each followed by an update unless the target is met
WEN_TARGET_LOSS = 3.0  # --optim_target_loss: stop once the loss is at or below it
WEN_TARGET_STEP = 0  # --optim_target_steps 0: the loss is taken at the schedule's first timestep
WEN_OPTIMIZATION_SAMPLES = 4  # --num_images_per_prompt 4: the loss is one norm over this many latents
# Detection score (detect_mem.py and det_mem_viz.ipynb): per-sample norm at every step of a
# guided generation, averaged over the steps [0, 50) and the 4 generations.
WEN_SCORE_SAMPLES = 4
WEN_SCORE_GUIDANCE_SCALE = 7.5
WEN_SCORE_STEPS = 50

SOURCE = "YuxinWenRick/diffusion_memorization inference_mem.py"


def add_adjustment_options(parser) -> None:
    group = parser.add_argument_group(f"--wen settings (defaults: {SOURCE} and its README command)")
    group.add_argument("--wen_learning_rate", type=cli.positive_float, default=WEN_LEARNING_RATE,
                       help="AdamW learning rate (--optim_lr)")
    group.add_argument("--wen_max_iterations", type=cli.positive_int, default=WEN_MAX_ITERATIONS,
                       help="U-Net passes of the optimization at most (--optim_iters)")
    group.add_argument("--wen_target_loss", type=cli.non_negative_float, default=WEN_TARGET_LOSS,
                       help="stop once || eps(e) - eps(empty) || over the latents is at or below this (README's "
                            "--optim_target_loss 3, for 4 SD latents of 4x64x64)")
    group.add_argument("--wen_timestep_index", type=cli.non_negative_int, default=WEN_TARGET_STEP,
                       help="schedule index of the loss's timestep (--optim_target_steps); past 0 the latents are first "
                            "denoised to it with the caption and -g, as their aug_prompt")
    group.add_argument("--wen_samples", type=cli.positive_int, default=WEN_OPTIMIZATION_SAMPLES,
                       help="the prompt's first N generation latents the loss is taken over (--num_images_per_prompt)")


def add_score_options(parser) -> None:
    group = parser.add_argument_group("--score wen (defaults: YuxinWenRick/diffusion_memorization detect_mem.py and "
                                      "examples/det_mem_viz.ipynb)")
    group.add_argument("--wen_samples", type=cli.positive_int, default=WEN_SCORE_SAMPLES,
                       help="generations per prompt")
    group.add_argument("--wen_guidance_scale", type=float, default=WEN_SCORE_GUIDANCE_SCALE,
                       help="guidance of the generations")
    group.add_argument("--wen_score_steps", type=cli.positive_int, default=WEN_SCORE_STEPS,
                       help="the score averages the first N of the --num_inference_steps steps")


register(Mitigation("wen", "ours: prompt embedding adjustment (Wen et al., ICLR 2024); settings below",
                    "utils.methods.wen.noise_magnitude:prepare", add_options=add_adjustment_options,
                    rows=(Row("prompt embedding adjustment (Wen)", 1, "wen"),),
                    cost="utils.methods.wen.noise_magnitude:adjustment_cost"))
register(Detector("wen", "Wen et al.'s noise-prediction magnitude, averaged over the steps of a guided generation",
                  "utils.methods.wen.noise_magnitude:prompt_scores", aggregate="mean", samples="wen_samples",
                  add_options=add_score_options,
                  # at the authors' aggregation (all 50 steps) and at the first step alone (their
                  # paper's cheapest variant)
                  comparisons={"Wen (noise magnitude, 50 steps)": ("wen", {}),
                               "Wen (noise magnitude, first step)": ("wen_first_step", {"wen_score_steps": 1})},
                  cost="utils.methods.wen.noise_magnitude:score_cost"))
