"""Han et al., "Adjusting Initial Noise to Mitigate Memorization in Text-to-Image Diffusion
Models" (NeurIPS 2025): the initial noise x_T is moved out of the attraction basin before
classifier-free guidance drives the generation; two mitigations of script 4 (rows of Table 1),
the code in ``initial_noise``.

* ``--han_batch_wise``: every latent of the prompt takes the same fixed number of
  sharpness-aware steps against the text-conditional noise difference at the first timestep,
  and the first steps of the generation take the unconditional prediction alone (no CFG).
* ``--han_per_sample``: each latent is optimized alone (AdamW on || eps_c - eps_u ||) until its
  own loss reaches the target; the generation is guided at every step.

Defaults are the authors' (hygnhan/init_noise_diffusion_memorization): ``local_sd_pipeline.py``
(``adj_init_noise_batch_wise``, ``adj_init_noise_per_sample``, the denoising loop) with the flags
of their README's two commands, and ``generate_images.py``'s defaults. Their evaluation is the
suite's script 4 setting: NeMo's ``prompts/memorized_laion_prompts.csv`` (the same 500 prompts,
byte for byte), SD v1.4 with DDIM, 50 steps, guidance 7, 10 images per prompt, one prompt per
call (``-b 1``), ``--seed 2``; they run bfloat16 and draw each prompt's noise from one global
CUDA generator seeded once.
"""

from utils import cli
from utils.methods.registry import Mitigation, Row, register

# Both variants take the noise difference eps(x_T, t, y) - eps(x_T, t, "") at the schedule's
# first timestep: local_sd_pipeline.py, timesteps[0] (batch-wise) and target_steps=[0] (per-sample).
HAN_TIMESTEP_INDEX = 0

# Batch-wise (README: --batch_wise --rho 50 --gamma 0.7 --adj_iters 2 --apply_cfg_step 4; the same
# are generate_images.py's defaults).
HAN_RHO = 50.0  # --rho: length of the ascent step delta = rho * d / ||d|| (per latent)
HAN_GAMMA = 0.7  # --gamma: x_T <- x_T - gamma * (d(x_T + delta) - d(x_T))
HAN_ITERATIONS = 2  # --adj_iters: updates of every latent (2 guided U-Net calls each)
# --apply_cfg_step: the denoising loop takes the unconditional prediction alone at steps
# i <= 4 (``if i <= args.apply_cfg_step``), so guidance starts at step 5 (0-based)
HAN_APPLY_CFG_STEP = 4

# Per-sample (README: --per_sample --target_loss 0.9 --lr 0.01; generate_images.py's defaults too).
HAN_TARGET_LOSS = 0.9  # --target_loss: stop once || eps_c - eps_u || of the latent is at or below it
HAN_LEARNING_RATE = 0.01  # --lr: AdamW with torch's other defaults (weight decay 0.01)
HAN_MAX_ITERATIONS = 1000  # --optim_iters: U-Net passes per latent at most, each followed by an update unless the target is met

SOURCE = "hygnhan/init_noise_diffusion_memorization local_sd_pipeline.py, README command"


def add_batch_wise_options(parser) -> None:
    group = parser.add_argument_group(f"--han_batch_wise settings (defaults: {SOURCE})")
    group.add_argument("--han_rho", type=cli.positive_float, default=HAN_RHO,
                       help="length of the ascent step rho * d / ||d|| of each latent (--rho)")
    group.add_argument("--han_gamma", type=cli.non_negative_float, default=HAN_GAMMA,
                       help="step size of the update x_T - gamma * (d(x_T + delta) - d(x_T)) (--gamma)")
    group.add_argument("--han_iterations", type=cli.non_negative_int, default=HAN_ITERATIONS,
                       help="updates of every latent, 2 guided U-Net calls each (--adj_iters)")
    group.add_argument("--han_apply_cfg_step", type=cli.non_negative_int, default=HAN_APPLY_CFG_STEP,
                       help="steps 0..N take the unconditional prediction alone, -g from step N+1 on (--apply_cfg_step)")


def add_per_sample_options(parser) -> None:
    group = parser.add_argument_group(f"--han_per_sample settings (defaults: {SOURCE})")
    group.add_argument("--han_target_loss", type=cli.non_negative_float, default=HAN_TARGET_LOSS,
                       help="stop a latent's optimization once its || eps_c - eps_u || is at or below this "
                            "(--target_loss; one SD latent of 4x64x64)")
    group.add_argument("--han_learning_rate", type=cli.positive_float, default=HAN_LEARNING_RATE,
                       help="AdamW learning rate (--lr)")
    group.add_argument("--han_max_iterations", type=cli.positive_int, default=HAN_MAX_ITERATIONS,
                       help="U-Net passes per latent at most (--optim_iters)")


register(Mitigation("han_batch_wise", "ours: initial noise adjustment, batch-wise, with CFG from step "
                    "--han_apply_cfg_step + 1 (Han et al., NeurIPS 2025); settings below",
                    "utils.methods.han.initial_noise:prepare_batch_wise", add_options=add_batch_wise_options,
                    rows=(Row("initial noise adjustment: batch-wise (Han)", 11, "han_batch_wise"),),
                    cost="utils.methods.han.initial_noise:batch_wise_cost"))
register(Mitigation("han_per_sample", "ours: initial noise adjustment, per-sample (Han et al., NeurIPS 2025); "
                    "settings below", "utils.methods.han.initial_noise:prepare_per_sample",
                    add_options=add_per_sample_options,
                    rows=(Row("initial noise adjustment: per-sample (Han)", 11.5, "han_per_sample"),),
                    cost="utils.methods.han.initial_noise:per_sample_cost"))
