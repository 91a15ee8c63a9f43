"""The defaults of the shared machinery (models, generation, metrics, assets), each with where
it comes from; each method's own defaults live in its package (``utils.methods.<name>``).

Torch-free on purpose: the scripts build their parsers from these, so ``--help`` and a bad
flag answer before torch, diffusers or transformers are imported.
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
# Generation (SPEC §5, authors' script 4)
GENERATION_SEED = 2
NUM_SAMPLES = 10
GENERATION_STEPS = 50
GUIDANCE_SCALE = 7.0
PROMPTS_PER_BATCH = 1  # authors' script 4 -b/--batch_size: prompts per pipeline call, each with all its samples

# ---------------------------------------------------------------------------------------
# Replication (the Dori paper; script 8, experiments.locality)
SSCD_REPLICATION_THRESHOLD = 0.7  # paper; NeMo App. C.1 for VM prompts
# The test bed's weight-free stand-in (ours; its VM generations score 0.57-0.69 to their
# training image, held-out images 0.55 between seeds).
PIXEL_REPLICATION_THRESHOLD = 0.5

# ---------------------------------------------------------------------------------------
# Metrics (SPEC §6)
SSCD_MODEL = "sscd_disc_mixup"  # the NeMo authors' metric scripts (weights/sscd_disc_mixup.torchscript.pt)
CLIP_MODEL = "openai/clip-vit-base-patch32"  # CLIP ViT-B/32 for A_CLIP and CLIP-FID

# ---------------------------------------------------------------------------------------
# Assets (0_fetch_assets.py). The authors' files are pinned to the commit of
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
