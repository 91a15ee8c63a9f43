"""The methods, one package each, every one registering what the scripts and Table 1 run of
it (``registry``): ``nemo`` (NeMo: statistics, noise differences, scores, localization,
neuron sets, export), ``wen`` (prompt-embedding adjustment and detection score), ``ren``
(attention scaling), ``random_tokens``, ``wanda`` (Chavhan et al.'s pruning of memorized
weights), ``dori`` (Kowalczuk et al.'s attack and adversarial fine-tuning).

A package's ``__init__`` holds its defaults (each with its source), its flags and its registry
entries, torch-free; its modules hold the computation. A new method is one package imported
here, its entries and its tests.
"""

from utils.methods import nemo, wen, ren, random_tokens, wanda, dori  # isort: skip  # noqa: F401 (they register, in this order)
from utils.methods.registry import DETECTORS, MITIGATIONS, ROWS  # noqa: F401
