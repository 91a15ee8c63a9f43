"""Random tokens added to the prompt (Somepalli et al., NeurIPS 2023), the Table 1 baseline
(script 4 ``--random_tokens N``).

Each added token is a vocabulary id drawn uniformly, decoded to text and inserted as a word
at a uniformly drawn whitespace position of the caption, as in the code the baseline comes
from (somepago/DCR ``diff_inference.py`` and YuxinWenRick/diffusion_memorization
``optim_utils.py``, ``rand_word_add``). The paper's Table 1 adds 1, 4 or 10 tokens.
"""

from __future__ import annotations

import random

from utils.generation import Prepare, PromptCondition, caption_condition

# Ids drawn from [0, 49400): the authors' ``np.random.randint(49400)``, which for CLIP's
# tokenizer (49,408 ids) leaves out the last ids, the start and end tokens among them.
VOCABULARY_IDS = 49400


def candidate_ids(tokenizer) -> list[int]:
    """Ids that may be added: the first ``VOCABULARY_IDS`` of the vocabulary, special tokens left out."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(min(VOCABULARY_IDS, len(tokenizer))) if i not in special]


def add_random_tokens(caption: str, tokenizer, count: int, rng: random.Random) -> tuple[str, list[str]]:
    """``caption`` with ``count`` random vocabulary tokens inserted as words; returns the new
    caption and the added words in the order drawn. The caption's own words keep their order."""
    ids = candidate_ids(tokenizer)
    words = caption.split(" ")
    added = []
    for _ in range(count):
        word = tokenizer.decode([rng.choice(ids)]).strip()
        words.insert(rng.randint(0, len(words)), word)
        added.append(word)
    return " ".join(words), added


def prompt_rng(seed: int, prompt: int) -> random.Random:
    """The random draw of prompt ``prompt``: the same for a resumed or sharded run."""
    return random.Random(f"{seed}/{prompt}")


def prepare(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--random_tokens N``: N random vocabulary tokens inserted into each caption."""

    def changed(index: int, caption: str, _latents) -> PromptCondition:
        text, added = add_random_tokens(caption, pipe.tokenizer, args.random_tokens,
                                        prompt_rng(args.random_token_seed, index))
        condition = caption_condition(pipe, text)
        condition.record = dict(caption_used=text, added_tokens=added)
        return condition

    return changed
