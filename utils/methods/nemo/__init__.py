"""NeMo (Hintersdorf et al., NeurIPS 2024), SPEC §2-5: text-only activation statistics
(``statistics``), first-step noise differences (``noise``), MS-SSIM memorization and blocked
scores (``score``), initial selection and refinement (``localization``), script 3's flags
(``options``), switching neurons off (``deactivation``), the neuron sets of script 4
(``selection``, ``mitigation``) and the pruned model (``export``).

Defaults are the authors' scripts (ml-research/localizing_memorization_in_diffusion_models)
and the paper, each marked where it is ours. Torch-free: the scripts' parsers read them.
"""

from utils import cli
from utils.methods.registry import ALL_REFINED, WANDA, Detector, Mitigation, Row, register

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
# Early decisions (ours): a test is first probed on this many kept seeds, highest
# previous score first, and rejected there when their MS-SSIM proves it; otherwise all kept
# seeds are scored in one call. On the CPU one seed a call costs no throughput (BENCHMARKS.md); on CUDA a bigger probe keeps the device busy (not yet measured on a GPU).
SEEDS_PER_CALL_CPU = 1
SEEDS_PER_CALL_CUDA = 4
# A probe is made while the estimated share of tests it decides is at least its seeds over
# the kept seeds (its cost over the forwards a decision saves); the estimate moves this far
# towards each test's outcome (ours: recent tests, a walk's phases differ: BENCHMARKS.md).
PROBE_SHARE_RATE = 0.25
PARALLEL_PROMPTS = 1  # prompts whose walks share U-Net calls (ours); no gain on the CPU
# A partial score must pass the threshold by this much to decide a test, and a full score
# within it is recomputed in the full computation's U-Net batch (ours). It covers the float
# noise of other batch compositions (a U-Net batch of 1 or 2 rounds otherwise on the CPU);
# half precision is not measured.
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
# The Table-1 plan's localization work a prompt while no prompt of the run is done (ours: the
# test bed's first VM and TM prompt took 149 and 140 tests, 1,137 and 1,179 sample-forwards at
# 10 seeds; BENCHMARKS.md, "The cost before the work"); a resumed run takes its own median.
PRIOR_TESTS_PER_PROMPT = 150
PRIOR_FORWARDS_PER_SEED = 115
SCALING_FACTOR = 0.0  # authors' --scaling_factor: deactivated neurons are multiplied by it
RANDOM_NEURON_SEED = 0  # ours: seeds the draw of random neurons


def add_neuron_options(parser) -> None:
    group = parser.add_argument_group("neuron modes (NeMo)")
    group.add_argument("-sf", "--scaling_factor", type=float, default=SCALING_FACTOR,
                       help="authors': factor for deactivated neurons")


def add_score_options(parser) -> None:
    group = parser.add_argument_group("--score nemo")
    group.add_argument("--batch_size", type=cli.positive_int, default=PAIRWISE_SSIM_BATCH_SIZE,
                       help="pairs per MS-SSIM batch (authors' script 2: 45, all pairs of 10 samples); a pair's "
                            "score depends on its batch through the data range")


_PREPARE, _SETS = "utils.methods.nemo.mitigation:prepare", "utils.methods.nemo.mitigation:neuron_sets"
_neuron_mode = dict(prepare=_PREPARE, neuron_sets=_SETS, add_options=add_neuron_options)
_per_prompt = dict(per_prompt=True, cost="utils.methods.nemo.mitigation:per_prompt_cost")
register(Mitigation("initial_neurons", "authors': each prompt's initial selection", **_per_prompt, **_neuron_mode))
register(Mitigation(
    "refined_neurons", "authors': each prompt's refined neurons (NeMo)", **_per_prompt, **_neuron_mode,
    rows=(Row("NeMo", 7, "refined_neurons", neurons=True, held_out=("block_top_k_neurons", ALL_REFINED)),
          # NeMo on Chavhan et al.'s pruned model: how much of either mitigation the other leaves to do
          Row("NeMo on the Wanda-pruned model", 9, "refined_neurons", neurons=True, on_held_out=False,
              model=WANDA))))
register(Mitigation("block_top_k_neurons_per_layer",
                    "authors': the K most frequent refined neurons of each layer, for every prompt",
                    takes=cli.positive_int, metavar="K", **_neuron_mode))
register(Mitigation("block_top_k_neurons", "authors': the K most frequent refined neurons over all layers, for every prompt",
                    takes=cli.positive_int, metavar="K", **_neuron_mode))
register(Mitigation("block_top_k_neuron_subgroups", "authors': union of the K most frequent refined neuron sets, for "
                    "every prompt", takes=cli.positive_int, metavar="K", **_neuron_mode))
register(Mitigation(
    "block_random_neurons", "ours (the authors' flag of this name takes a count): per prompt, as many random neurons "
    "per layer as its refined set has", **_per_prompt, **_neuron_mode,
    rows=(Row("random neurons", 2, "block_random_neurons", neurons=True, on_held_out=False),)))
register(Detector("nemo", "NeMo's SSIM score (SPEC §3): max pairwise MS-SSIM of the first-step noise differences",
                  "utils.methods.nemo.score:prompt_scores", aggregate="max", samples="samples_per_prompt",
                  add_options=add_score_options, comparisons={"NeMo (SSIM score)": ("nemo", {})},
                  cost="utils.methods.nemo.score:score_cost"))
