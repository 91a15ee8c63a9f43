"""Dori (Kowalczuk, Hintersdorf, Struppek et al., "Finding Dori: Memorization in
Text-to-Image Diffusion Models Is Not Local"): the attack that finds text embeddings making a
mitigated model replicate a training image again (script 8), and adversarial fine-tuning
(script 9, a row of Table 1 with ``--dori``); the code in ``attack`` and ``finetuning``.

The authors' code (sprintml/finding_dori) could not be read here: defaults are the paper's
(via its project page, sprintml.github.io blog "finding-dori") and are marked where they are
our own choice.
"""

from utils.methods.registry import FINETUNED, Row, register_rows

ATTACK_STEPS = 50  # paper §3: Adam, learning rate 0.1, 50 steps, 8 noise samples a step
ATTACK_LEARNING_RATE = 0.1
ATTACK_BATCH = 8
ATTACK_SEED = 0  # ours: seeds the noise and timesteps the attack draws
ATTACK_TYPES = ("VM", "TM", "all")  # memorized prompts attacked and erased
ATTACK_TYPE = "VM"  # the Dori paper reports VM prompts
# Adversarial fine-tuning (paper §4.4): 5 epochs over the memorized images, the adversarial
# loss and the utility loss weighted 1:1. Learning rate and optimizer are not stated: AdamW at
# 1e-5, a usual rate for fine-tuning SD, is our choice.
FINETUNE_EPOCHS = 5
FINETUNE_LEARNING_RATE = 1e-5
UTILITY_BATCH = 4  # ours: image-caption pairs of the utility loss per update
UTILITY_WEIGHT = 1.0  # paper §4.4: L_adv + L_utility, 1:1
UTILITY_EMPTY_CAPTION_SHARE = 0.0  # paper: not stated (ours: none; SD's own training drops 10%)
# ours, not the paper's: a distillation loss on the utility pairs towards the model before
# fine-tuning; 0 (off) is the paper's recipe. The test bed's Table 1 turns it on (testbed/table1.py).
DISTILLATION_WEIGHT = 0.0
# ours: updates between checkpoints of script 9. A checkpoint at SD's size holds 860M float32
# weights and AdamW's two moments (3 x 3.4 GB), so it is written rarely; 100 of the paper's
# 2,500 updates (5 epochs x 500 images) is at most 4% of a run lost to a preemption.
CHECKPOINT_EVERY = 100
# ours: script 9 under a launcher with N processes. "images": an update takes N memorized images,
# one a process, gradients averaged (data-parallel over images: ceil(M / N) updates an epoch);
# "single": the single-process updates, each one's noise samples and utility pairs split over
# the processes (one process's gradients up to float rounding). One process: both are the
# single-process schedule.
SCHEDULES = ("images", "single")
SCHEDULE = "images"
# ours: under "images", process r draws its noise, timesteps and utility pairs from a generator
# seeded seed + RANK_SEED_STRIDE * r (rank 0: the single-process seed), far from the attack's
# seeds seed + 1000 * epoch + image (below 1,000 epochs)
RANK_SEED_STRIDE = 1_000_000

register_rows(Row("adversarial fine-tuning", 10, model=FINETUNED))
