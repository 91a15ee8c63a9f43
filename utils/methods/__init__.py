"""The methods, one package each, every one registering what the scripts and Table 1 run of
it (``registry``): ``nemo`` (NeMo: statistics, noise differences, scores, localization,
neuron sets, export), ``wen`` (prompt-embedding adjustment and detection score), ``ren``
(attention scaling), ``random_tokens``, ``wanda`` (Chavhan et al.'s pruning of memorized
weights), ``dori`` (Kowalczuk et al.'s attack and adversarial fine-tuning), and every other
package in this folder.

A package's ``__init__`` holds its defaults (each with its source), its flags and its registry
entries, torch-free; its modules hold the computation. A new method is one package in this
folder (imported here by discovery) and its tests.
"""

import importlib
import pkgutil

from utils.methods.registry import DETECTORS, MITIGATIONS, ROWS

__all__ = ["DETECTORS", "MITIGATIONS", "ROWS", "PACKAGES"]  # every registry entry, once every package is imported

# The paper's methods register first, in this order (script 4's flags and script 2's scores
# are listed in it); later packages follow by name.
PAPER_ORDER = ("nemo", "wen", "ren", "random_tokens", "wanda", "dori")
PACKAGES = PAPER_ORDER + tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)
                                      if module.ispkg and module.name not in PAPER_ORDER))
for _package in PACKAGES:
    importlib.import_module(f"{__name__}.{_package}")
