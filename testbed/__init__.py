"""The built-in test bed: a tiny SD-shaped model trained here to memorize (see README)."""

import os

TESTBED_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(TESTBED_DIR, "model")
PROMPTS_DIR = os.path.join(TESTBED_DIR, "prompts")
MEMORIZED_PROMPTS = os.path.join(PROMPTS_DIR, "memorized_prompts.csv")
UNMEMORIZED_PROMPTS = os.path.join(PROMPTS_DIR, "unmemorized_prompts.csv")
ADDITIONAL_PROMPTS = os.path.join(PROMPTS_DIR, "additional_prompts.csv")
ORIGINALS_DIR = os.path.join(TESTBED_DIR, "originals")
# MS-SSIM kernel for the 24x24 latents: the largest the 3-scale check accepts (SPEC §3 uses
# 11 on SD's 64x64 latents). torchmetrics' Gaussian window itself stays 11 wide (sigma 1.5).
SSIM_KERNEL_SIZE = 5
# The planted test bed (testbed/train_planted.py): memorization through known neurons.
PLANTED_DIR = os.path.join(TESTBED_DIR, "planted")
