"""What a method declares so that the scripts and Table 1 pick it up: a ``Mitigation`` (a way
script 4 generates a prompt's images, with the Table-1 rows it adds) or a ``Detector`` (a
memorization score of script 2, with the comparisons Table 1 reports).

Torch-free: a method's package registers its entries at import, naming its code as
``"module:function"``, which is imported only when it runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Callable

# The models a Table-1 row may run on besides the given one: the one script 7 prunes (Wanda)
# and the one script 9 fine-tunes (Dori's adversarial fine-tuning).
GIVEN, WANDA, FINETUNED = "", "wanda", "finetuned"
# A row's option value replaced by the count of distinct refined neurons of the table's prompts
# (NeMo on held-out prompts deactivates every refined neuron at once, as script 5 exports).
ALL_REFINED = "all_refined"


def load(target: str) -> Callable:
    """The function named ``"package.module:function"``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Row:
    """A row of Table 1: script 4 with ``mitigation`` set to ``value`` and ``options`` (flag
    dests of script 4) over its defaults, on the ``model`` a step made."""

    name: str
    order: float  # position in the table (the paper's Table 1 order; a new method goes after it)
    mitigation: str | None = None  # registry name; None: nothing changed
    value: object = True  # the mitigation flag's value (True for a switch)
    options: dict = field(default_factory=dict)
    neurons: bool = False  # a per-prompt neuron set: the neurons column counts it
    # generated on the held-out prompts of the quality columns too; False where the row is per
    # memorized prompt (its neurons were found for that prompt) and means nothing elsewhere
    on_held_out: bool = True
    held_out: tuple[str, object] | None = None  # (mitigation, value) there, if not the row's own
    model: str = GIVEN

    def generation(self, held_out: bool = False) -> dict:
        """Script 4's flag dests for this row (on the held-out prompts with ``held_out``)."""
        mitigation, value = self.held_out if held_out and self.held_out else (self.mitigation, self.value)
        return {**self.options, **({mitigation: value} if mitigation else {})}


@dataclass(frozen=True)
class Mitigation:
    """Script 4's ``--<name>``. ``prepare(pipe, args, neuron_sets) -> utils.generation.Prepare``
    makes each prompt's condition; ``neuron_sets(args, results, widths, rows)`` (methods that
    read script 3's results) gives each result row's neurons."""

    name: str
    help: str  # one line, with the source of the method
    prepare: str  # "module:function"
    takes: Callable | None = None  # the flag's value type (a count); None: a switch
    metavar: str | None = None
    add_options: Callable[[argparse.ArgumentParser], None] | None = None  # its settings group
    neuron_sets: str | None = None  # "module:function"; set: the mitigation reads script 3's results
    per_prompt: bool = False  # its neurons are each prompt's own (not for another prompt file)
    rows: tuple[Row, ...] = ()
    # "module:function": (script 4's args) -> utils.cost.PromptCost, what it changes in a prompt's
    # work (its own U-Net calls, ...) for the Table-1 plan; None: nothing (a plain generation's work)
    cost: str | None = None


@dataclass(frozen=True)
class Detector:
    """Script 2's ``--score <name>``. ``score(pipe, layers, latents, args, prompt) -> [n]``
    per-sample scores; the prompt's score is their ``aggregate`` ('max' or 'mean')."""

    name: str
    help: str
    score: str  # "module:function"
    aggregate: str
    samples: str  # the flag dest holding the number of samples (latents) a prompt is scored on
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    # Table 1's detection comparison: label -> script 2's flag dests for it
    comparisons: dict[str, dict] = field(default_factory=dict)
    # "module:function": (script 2's args) -> tuple of utils.cost.Passes, the U-Net calls of one
    # prompt's score, for the Table-1 plan; None: not declared (the plan counts its prompts only)
    cost: str | None = None


MITIGATIONS: dict[str, Mitigation] = {}
DETECTORS: dict[str, Detector] = {}


def register(entry: Mitigation | Detector) -> None:
    """Add a method's entry; a name is registered once."""
    table = MITIGATIONS if isinstance(entry, Mitigation) else DETECTORS
    if entry.name in table:
        raise ValueError(f"{type(entry).__name__} {entry.name!r} is registered twice")
    if isinstance(entry, Mitigation):
        register_rows(*entry.rows)
    table[entry.name] = entry


def unregister(name: str) -> None:
    """Remove a mitigation (and its rows) or a detector: tests that register one of their own."""
    entry = MITIGATIONS.pop(name, None)
    DETECTORS.pop(name, None)
    for row in entry.rows if entry else ():
        ROWS.remove(row)


ROWS: list[Row] = []  # every registered row: the mitigations' and those of models other steps make


def register_rows(*rows: Row) -> None:
    """Add Table-1 rows that are no script-4 mitigation of their own (a model another step makes)."""
    known = {row.name for row in ROWS}
    for row in rows:
        if "," in row.name:
            raise ValueError(f"Table-1 row {row.name!r}: no comma in a row's name (--rows is comma-separated)")
        if row.name in known:
            raise ValueError(f"Table-1 row {row.name!r} is registered twice")
        ROWS.append(row)
        known.add(row.name)
