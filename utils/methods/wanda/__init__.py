"""Wanda pruning of memorized weights (Chavhan et al., "Memorization is Localized within a
Small Subspace in Diffusion Models", §4): script 7 prunes a model on a subset P of the
memorized prompts (the code in ``pruning``); Table 1 evaluates that model as a row.

Defaults are the authors' code (ruchikachavhan/concept-prune: ``configs/wanda_config.yaml``,
``wanda/wanda.py``, ``neuron_receivers/wanda_receiver.py``, ``wanda/save_union_over_time.py``).
"""

from utils.methods.registry import WANDA, Row, register_rows

WANDA_SPARSITY = 0.01  # wanda_config.yaml skill_ratio: top 1% of each row
WANDA_PRUNED_CALLS = 10  # save_union_over_time.py --timesteps 10: union over the first 10 U-Net calls
WANDA_SUBSET_SIZE = 10  # datasets/memorize_{0..9}.txt: |P| = 10 prompts (paper §5.1, m = 10)
WANDA_SUBSET_SEED = 0  # ours: which rows of the prompt file form P (the authors' files are fixed subsets)
WANDA_COLLECTION_SEED = 0  # wanda_config.yaml seed, set before every prompt and the empty prompt
WANDA_COLLECTION_STEPS = 50  # the pipeline's default, as the authors call it
WANDA_COLLECTION_GUIDANCE = 7.5  # the pipeline's default: both CFG halves reach the hook

# The pruned model's row: on the prompts not in P (a second row, over P, is added by the table)
register_rows(Row("Wanda (pruned model)", 8, model=WANDA))
