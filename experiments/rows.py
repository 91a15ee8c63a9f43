"""The rows of the paper's Table 1: what script 4 runs for each, and what its columns are.

Torch-free, so the Table-1 command can list the rows in ``--help`` at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """A row of Table 1: script 4's flags for it, and what its columns are."""

    name: str
    flags: tuple[str, ...]
    neurons: bool = False  # a per-prompt neuron set: the neurons column counts it
    # generated on the held-out prompts of the quality column too; False where the setting is
    # per memorized prompt (its neurons were found for that prompt) and means nothing elsewhere
    on_held_out: bool = True
    held_out_flags: tuple[str, ...] | None = None  # script 4's flags there, if not ``flags``
    model: str = ""  # "": the given model; WANDA or FINETUNED: the model script 7 or 9 makes of it

    @property
    def quality_flags(self) -> tuple[str, ...]:
        return self.flags if self.held_out_flags is None else self.held_out_flags


# Table 1's rows in the paper's order. NeMo on held-out prompts deactivates every refined
# neuron of the memorized prompts at once (the model script 5 exports by default).
ALL_REFINED = "all_refined"  # placeholder: replaced by the count of distinct refined neurons
WANDA, FINETUNED = "wanda", "finetuned"  # the models scripts 7 and 9 make
SETTINGS = (
    Setting("all neurons active", ()),
    Setting("prompt embedding adjustment (Wen)", ("--wen",)),
    Setting("random neurons", ("--block_random_neurons",), neurons=True, on_held_out=False),
    Setting("attention scaling (Ren)", ("--ren",)),
    Setting("1 random token", ("--random_tokens", "1")),
    Setting("4 random tokens", ("--random_tokens", "4")),
    Setting("10 random tokens", ("--random_tokens", "10")),
    Setting("NeMo", ("--refined_neurons",), neurons=True, held_out_flags=("--block_top_k_neurons", ALL_REFINED)),
    # Chavhan et al.'s pruned model: its row is over the prompts not in its set P, a second
    # row over P; NeMo on it shows how much of either mitigation the other leaves to do.
    Setting("Wanda (pruned model)", (), model=WANDA),
    Setting("NeMo on the Wanda-pruned model", ("--refined_neurons",), neurons=True, on_held_out=False, model=WANDA),
    # Kowalczuk et al.'s defence (script 9), with script 6 --dori.
    Setting("adversarial fine-tuning", (), model=FINETUNED),
)
PLAIN = SETTINGS[0].name
IN_P = ", prompts in P"  # the second row of a pruned model's setting: the prompts it was pruned on


def folder_name(setting: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in setting.lower()).strip("_")
