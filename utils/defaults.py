"""Every default of the suite's flags, each with where it comes from.

Torch-free on purpose: the scripts build their parsers from these, so ``--help`` and a bad
flag answer before torch, diffusers or transformers are imported. The modules that
implement a method import its defaults from here.
"""

# ---------------------------------------------------------------------------------------
# Models
# The authors' `-v/--version` values (their scripts) and the hub ids they stand for, plus
# the SD 2 family (Stability AI's hub ids), which Dori and Chavhan et al. report on.
MODEL_VERSIONS = {
    "v1-4": "CompVis/stable-diffusion-v1-4",
    # the authors map v1-5 to runwayml/stable-diffusion-v1-5, which the hub has removed; this
    # is its official mirror, the same weights
    "v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v2-base": "stabilityai/stable-diffusion-2-base",  # 512 px, epsilon
    "v2": "stabilityai/stable-diffusion-2",  # 768 px, v-prediction
    "v2-1-base": "stabilityai/stable-diffusion-2-1-base",  # 512 px, epsilon
    "v2-1": "stabilityai/stable-diffusion-2-1",  # 768 px, v-prediction
}
DEFAULT_VERSION = "v1-4"  # the authors' scripts
# --dtype: auto is fp16 on CUDA (the paper's setting, SPEC §1) and fp32 elsewhere.
DTYPES = ("auto", "float16", "bfloat16", "float32")
DEFAULT_DTYPE = "auto"
# Scripts 5 and 7 write model folders: float32 by default (ours), so no precision is lost.
SAVED_DTYPE = "float32"

# ---------------------------------------------------------------------------------------
# NeMo (SPEC; the authors' scripts, ml-research/localizing_memorization_in_diffusion_models)
STATISTICS_BATCH_SIZE = 64  # prompts per text-encoder batch in script 1 (ours: text only, cheap)
# Noise differences (SPEC §3, authors' script 3 flags)
SAMPLES_PER_PROMPT = 10
NUM_INFERENCE_STEPS = 50
TIMESTEP_INDEX = 1  # the authors' loop returns at the schedule's second timestep (961 for SD)
DETECTION_GUIDANCE_SCALE = 0.0  # conditional prediction only (SPEC §3)
DETECTION_SEED = 1  # authors' scripts 2 and 3: --seed 1
# MS-SSIM (SPEC §3): 11x11 window, three scales with equal weights
SSIM_KERNEL_SIZE = 11
SSIM_BETAS = (0.33, 0.33, 0.33)
# Pairs per MS-SSIM batch of the pairwise score: authors' script 2 --batch_size (45, all
# pairs of 10 samples); their script 3 scores all pairs of a prompt in one batch.
PAIRWISE_SSIM_BATCH_SIZE = 45
# Localization (SPEC §4, authors' script 3)
MEMORIZATION_THRESHOLD = 0.428  # tau_mem, paper §4 / script 2 on LAION
INITIAL_THETA = 5.0
THETA_REDUCTION_PER_STEP = 0.25
MIN_THETA = 1.0
INITIAL_K = 0
# Sets scored per U-Net call; 0 = the plain sequential walk. On the CPU the sequential walk
# is fastest (speculated sets after a rejection are wasted and a bigger batch is no faster
# per latent: BENCHMARKS.md); GPU figures are still to be measured.
BATCH_CANDIDATES = 0
# Early decisions (ours, issue 23): a test is first probed on this many kept seeds, highest
# previous score first, and rejected there when their MS-SSIM proves it; otherwise all kept
# seeds are scored in one call. On the CPU one seed a call costs no throughput (BENCHMARKS.md,
# issue 5); on CUDA a bigger probe keeps the device busy (not yet measured on a GPU).
SEEDS_PER_CALL_CPU = 1
SEEDS_PER_CALL_CUDA = 4
# A probe is made while the estimated share of tests it decides is at least its seeds over
# the kept seeds (its cost over the forwards a decision saves); the estimate moves this far
# towards each test's outcome (ours: recent tests, a walk's phases differ: BENCHMARKS.md, issue 23).
PROBE_SHARE_RATE = 0.25
PARALLEL_PROMPTS = 1  # prompts whose walks share U-Net calls (ours); no gain on the CPU
# A partial score must pass the threshold by this much to decide a test, and a full score
# within it is recomputed in the full computation's U-Net batch. It covers the float noise of
# other batch compositions: up to 2.4e-5 on the test bed in float32 (a U-Net batch of 1 or 2
# rounds otherwise on the CPU; BENCHMARKS.md, issue 23). Half precision is not measured.
DECISION_MARGIN = 1e-3
# Script 3 --smoke (ours; CI's real-shape pass): the least work that runs every step of the
# walk at any model size. 2 seeds (the pairwise score needs 2) kept whatever their score; no
# z-score passes theta, so the first step's set is the top-1 neuron of each layer, accepted
# (every blocked score is <= 1); every refinement test is rejected (no score is below -1),
# each by its one-seed probe.
SMOKE_SAMPLES_PER_PROMPT = 2
SMOKE_THETA = 1000.0
SMOKE_K = 1
SMOKE_ACCEPT_ALL = 1.0
SMOKE_REJECT_ALL = -1.0
SCALING_FACTOR = 0.0  # authors' --scaling_factor: deactivated neurons are multiplied by it
# Generation (SPEC §5, authors' script 4)
GENERATION_SEED = 2
NUM_SAMPLES = 10
GENERATION_STEPS = 50
GUIDANCE_SCALE = 7.0
PROMPTS_PER_BATCH = 1  # authors' script 4 -b/--batch_size: prompts per pipeline call, each with all its samples
RANDOM_NEURON_SEED = 0  # ours: seeds the draw of random neurons

# ---------------------------------------------------------------------------------------
# Wen et al. (ICLR 2024), YuxinWenRick/diffusion_memorization
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

# Ren et al. (ECCV 2024), renjie3/MemAttn
REN_BOS_LOGIT_FACTOR = 1.25  # text2img.py --c1 (1.0 there; 1.25 in local_cmd_inference_time_mitigation.sh)
REN_MASK_PADDING = True  # the mitigation command passes --cross_attn_mask

# Random tokens (Somepalli et al., NeurIPS 2023; somepago/DCR diff_inference.py)
RANDOM_TOKEN_COUNTS = (1, 4, 10)  # NeMo paper, Table 1
RANDOM_TOKEN_SEED = 0  # ours: seeds each prompt's draw with (seed, prompt index)

# ---------------------------------------------------------------------------------------
# Wanda (Chavhan et al.), ruchikachavhan/concept-prune
WANDA_SPARSITY = 0.01  # wanda_config.yaml skill_ratio: top 1% of each row
WANDA_PRUNED_CALLS = 10  # save_union_over_time.py --timesteps 10: union over the first 10 U-Net calls
WANDA_SUBSET_SIZE = 10  # datasets/memorize_{0..9}.txt: |P| = 10 prompts (paper §5.1, m = 10)
WANDA_SUBSET_SEED = 0  # ours: which rows of the prompt file form P (the authors' files are fixed subsets)
WANDA_COLLECTION_SEED = 0  # wanda_config.yaml seed, set before every prompt and the empty prompt
WANDA_COLLECTION_STEPS = 50  # the pipeline's default, as the authors call it
WANDA_COLLECTION_GUIDANCE = 7.5  # the pipeline's default: both CFG halves reach the hook

# ---------------------------------------------------------------------------------------
# Dori (Kowalczuk et al.): the paper via its project page; sprintml/finding_dori unread here
ATTACK_STEPS = 50  # paper §3: Adam, learning rate 0.1, 50 steps, 8 noise samples a step
ATTACK_LEARNING_RATE = 0.1
ATTACK_BATCH = 8
ATTACK_SEED = 0  # ours: seeds the noise and timesteps the attack draws
ATTACK_TYPES = ("VM", "TM", "all")  # memorized prompts attacked and erased
ATTACK_TYPE = "VM"  # the Dori paper reports VM prompts
SSCD_REPLICATION_THRESHOLD = 0.7  # paper; NeMo App. C.1 for VM prompts
# The test bed's weight-free stand-in (ours; its VM generations score 0.57-0.69 to their
# training image, held-out images 0.55 between seeds).
PIXEL_REPLICATION_THRESHOLD = 0.5
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

# ---------------------------------------------------------------------------------------
# Metrics (SPEC §6)
SSCD_MODEL = "sscd_disc_mixup"  # the NeMo authors' metric scripts (weights/sscd_disc_mixup.torchscript.pt)
CLIP_MODEL = "openai/clip-vit-base-patch32"  # CLIP ViT-B/32 for A_CLIP and CLIP-FID

# ---------------------------------------------------------------------------------------
# Assets (issue 22: 0_fetch_assets.py). The authors' files are pinned to the commit of
# ml-research/localizing_memorization_in_diffusion_models that added them (its initial
# commit, c8de0c6, 2024-06-03; unchanged up to f952ede, the newest seen).
UPSTREAM_COMMIT = "c8de0c620ec511cdb9e937905d1503cd9758910b"
# The two SSCD TorchScript checkpoints (facebookresearch/sscd-copy-detection README) and the
# copy threshold of each: the SSCD similarity above which an image counts as a copy.
SSCD_CHECKPOINTS = ("sscd_disc_mixup", "sscd_disc_large")
SSCD_COPY_THRESHOLDS = {
    # Somepalli et al. 2023 count SSCD > 0.5 as a copy; NeMo's metric scripts use this model
    "sscd_disc_mixup": 0.5,
    # Wen et al. 2024, Chavhan et al. and MemBench use this model but publish no copy
    # threshold of their own for it; ours: the same 0.5, stated in every table
    "sscd_disc_large": 0.5,
}
# The default checkpoint's, also used for the stand-in embedders (NeMo's App. C.1 uses 0.7 to
# tell VM from TM prompts: SSCD_REPLICATION_THRESHOLD)
SSCD_COPY_THRESHOLD = SSCD_COPY_THRESHOLDS["sscd_disc_mixup"]
WEIGHTS_FOLDER = "weights"  # where 0_fetch_assets.py puts the SSCD checkpoints (ours)
ORIGINALS_FOLDER = "original_images"  # --originals of the README's commands
ORIGINALS_FROM = "prompts/memorized_laion_prompts.csv"  # the prompt file whose URLs are the originals
# Fetching (ours): img2dataset's defaults are 10 s timeout, 0 retries, 16+ threads per process;
# for a few hundred LAION hosts a longer timeout and a few retries lose fewer live links.
FETCH_WORKERS = 16
FETCH_TIMEOUT = 20.0  # seconds to connect and between two reads
FETCH_RETRIES = 3  # further tries after a timeout, a dropped connection, a 5xx or a 429
FETCH_BACKOFF = 1.0  # seconds before the first retry, doubled each time
