"""Jain et al.'s guidance schedules (CVPR 2025; anubhav1997/mitigating_memorization): no (or
opposite) classifier-free guidance until a transition point, the usual guidance after it.

Static transition point and opposite guidance (their ``generate_test_dataset_stp.py``): step i,
at timestep t_i of the run's schedule, is guided with the scale ``before`` while
t_i > the change step and with ``after`` from there on. Both branches are computed at every
step (noise = eps_u + g (eps_c - eps_u)), so this is a per-step scale:
``PromptCondition.guidance`` and ``utils.generation.scheduled_guidance`` compute it as theirs.
Their loop has one more branch: at a step whose timestep *equals* the change step it switches
the scheduler to a 200-step schedule for the rest of the run (their README's static command,
500 on their DPM-Solver schedule, takes it; the suite's DDIM schedules of 50 steps hold
neither 500 nor 650). A per-step scale cannot re-grid the schedule, so such a change step is
refused (``transition_scales``).

Dynamic transition point (their ``generate_test_dataset_dtp.py``): the scale of each image
depends on its own noise predictions, d_j = ||eps_u - eps_c|| at step j, not on the step
alone. The image is guided with ``before`` until the first step j >= 2 at which
d_j > d_{j-1} < d_{j-2} (the step after d's first local minimum), with ``after`` from step j on
(``DynamicTransition``). A step-index schedule cannot say this, so ``dynamic_guidance`` applies
it as the prompt's intervention: a hook on the U-Net's output puts each image's guided
prediction in the unconditional half and the prompt's schedule is 0 at every step, which
hands that half to the scheduler unchanged (noise = first half + 0 (second - first)).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from utils.cost import PromptCost
from utils.diffusion import predicted_noise
from utils.generation import Prepare, PromptCondition, caption_condition
from utils.hooks import edit_calls, edit_outputs

REGRID_STEPS = 200  # their scheduler.set_timesteps(200) at a timestep equal to the change step


def schedule_timesteps(scheduler, steps: int) -> tuple[int, ...]:
    """The timesteps of the scheduler's ``steps``-step schedule (a fresh copy is set, the
    pipeline's own scheduler is left as it is)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    return tuple(int(t) for t in fresh.timesteps)


def transition_scales(timesteps: Sequence[int], change_step: float, before: float, after: float,
                      flag: str = "the change step") -> tuple[float, ...]:
    """Their static schedule: step i's scale is ``before`` while its timestep is above
    ``change_step``, ``after`` from there on. A change step equal to one of the timesteps is
    refused (``flag`` names it): their loop re-grids the schedule to 200 steps there."""
    if change_step in timesteps:
        raise ValueError(f"{flag} {change_step:g} is a timestep of the {len(timesteps)}-step schedule "
                         f"{list(timesteps)}: there the authors' loop switches to a {REGRID_STEPS}-step schedule, "
                         "which a per-step guidance scale cannot do; pick a value between two timesteps")
    return tuple(float(before if t > change_step else after) for t in timesteps)


def scale_at(scales: tuple[float, ...], step: int) -> float:
    """``PromptCondition.guidance`` of a fixed schedule (``functools.partial(scale_at, scales)``)."""
    return scales[step]


def later_scale(args) -> float:
    """The scale after the transition: ``--jain_guidance_scale_later``, else the run's ``-g``."""
    return args.guidance_scale if args.jain_guidance_scale_later is None else args.jain_guidance_scale_later


def cost(steps: int) -> dict:
    """What every variant costs per image: two U-Net sample-forwards a step (both branches, as
    plain guidance; the dynamic rule reads the same two), nothing before generation."""
    return dict(unet_sample_forwards_per_image=2 * steps, mitigation_unet_sample_forwards=0, mitigation_seconds=0.0)


def generation_cost(args) -> PromptCost:
    """Script 4's ``--jain_static`` and ``--jain_opposite`` per prompt: no pass of their own, both
    halves at every step (their schedule is the run's guidance at no step)."""
    return PromptCost(both_halves=True)


def dynamic_cost(args) -> PromptCost:
    """Script 4's ``--jain_dynamic`` per prompt: as ``generation_cost``, each prompt in a call of
    its own (its rule's hooks are the prompt's)."""
    return PromptCost(both_halves=True, own_call=True)


def static_prepare(pipe, args, variant: str) -> Prepare:
    """Each prompt's caption with their static schedule (the same for every prompt) of
    ``variant`` ('static' or 'opposite': its ``--jain_<variant>_*`` settings)."""
    change_step = getattr(args, f"jain_{variant}_change_step")
    before = getattr(args, f"jain_{variant}_guidance_scale")
    timesteps = schedule_timesteps(pipe.scheduler, args.steps)
    after = later_scale(args)
    scales = transition_scales(timesteps, change_step, before, after, f"--jain_{variant}_change_step")
    guidance = functools.partial(scale_at, scales)
    first_later = next((i for i, t in enumerate(timesteps) if t <= change_step), None)
    record = dict(jain_change_step=change_step, jain_guidance_before=before, jain_guidance_after=after,
                  jain_transition_step=first_later,
                  jain_transition_timestep=None if first_later is None else timesteps[first_later], **cost(args.steps))

    def scheduled(_index: int, caption: str, _latents) -> PromptCondition:
        condition = caption_condition(pipe, caption)
        condition.guidance = guidance
        condition.record = dict(record)
        return condition

    return scheduled


def prepare_static(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--jain_static``: no guidance (scale 0) above the change step."""
    return static_prepare(pipe, args, "static")


def prepare_opposite(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--jain_opposite``: opposite guidance (scale -2) above the change step."""
    return static_prepare(pipe, args, "opposite")


class DynamicTransition:
    """Their dynamic transition point for a batch of images, fed one step at a time.

    Per image: d_j = ||eps_u - eps_c|| over its latent (their batch holds one image);
    d_{-1} = d_{-2} = -1 as their loop starts, so the earliest transition is step 2.
    """

    def __init__(self, before: float, after: float):
        self.before, self.after = before, after
        self.step = 0
        self.previous = self.before_previous = self.transition = None  # [b] each, from the first step

    def scales(self, unconditional: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        """This step's scale of each image [b] from its two noise predictions [b, c, h, w]."""
        difference = (unconditional.float() - conditional.float()).flatten(1).norm(dim=1)
        if self.transition is None:
            self.previous = torch.full_like(difference, -1.0)
            self.before_previous = self.previous.clone()
            self.transition = torch.full(difference.shape, -1, dtype=torch.long, device=difference.device)
        found = (self.transition < 0) & (difference > self.previous) & (self.before_previous > self.previous)
        self.transition[found] = self.step
        self.before_previous, self.previous = self.previous, difference
        self.step += 1
        return torch.where(self.transition >= 0, torch.tensor(self.after, device=difference.device),
                           torch.tensor(self.before, device=difference.device))

    def transition_steps(self) -> list[int | None]:
        """Each image's first step at the later scale (None: it never came)."""
        steps = [] if self.transition is None else self.transition.tolist()
        return [None if s < 0 else s for s in steps]


def first_half(_step: int) -> float:
    """``PromptCondition.guidance`` under ``dynamic_guidance``: scale 0 hands the first half of
    the U-Net's output (there: the guided prediction) to the scheduler unchanged."""
    return 0.0


@contextmanager
def dynamic_guidance(pipe, before: float, after: float, timesteps: tuple[int, ...], record: dict,
                     _prompt: int) -> Iterator[None]:
    """Their dynamic transition point in force for every U-Net call inside the context (one
    call a step, the batch [unconditional half, conditional half]); each image's transition
    step and timestep go into ``record`` on exit. The rule reads the noise the outputs stand
    for (``predicted_noise``: the outputs themselves for SD v1.x, as their code takes them).
    ``_prompt`` keeps two prompts' calls apart, so that a record is its own prompt's."""
    rule = DynamicTransition(before, after)
    inputs = []  # the (x_t [2b, 4, h, w], t) of the U-Net call being run

    def keep_input(args, kwargs, _name):
        inputs[:] = [args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"]]
        return args, kwargs

    def guide(output, _name):
        prediction = output[0] if isinstance(output, tuple) else output.sample  # [2b, c, h, w]
        unconditional, conditional = prediction.chunk(2)
        noise = predicted_noise(pipe.scheduler, prediction.float(), *inputs).chunk(2)
        scale = rule.scales(*noise).to(prediction.dtype).view(-1, *[1] * (prediction.dim() - 1))
        guided = torch.cat([unconditional + scale * (conditional - unconditional), conditional])
        return (guided, *output[1:]) if isinstance(output, tuple) else type(output)(sample=guided)

    with edit_calls({"unet": pipe.unet}, keep_input), edit_outputs({"unet": pipe.unet}, guide):
        yield
    steps = rule.transition_steps()
    record.update(jain_transition_steps=steps,
                  jain_transition_timesteps=[None if s is None else timesteps[s] for s in steps])


def prepare_dynamic(pipe, args, _neuron_sets=None) -> Prepare:
    """Script 4's ``--jain_dynamic``: each image at scale 1 (the conditional prediction) until
    its own transition point, then at the later scale. Prompts are generated a call each."""
    timesteps = schedule_timesteps(pipe.scheduler, args.steps)
    before, after = args.jain_dynamic_guidance_scale, later_scale(args)

    def dynamic(index: int, caption: str, _latents) -> PromptCondition:
        condition = caption_condition(pipe, caption)
        condition.record = dict(jain_guidance_before=before, jain_guidance_after=after, **cost(args.steps))
        condition.intervention = functools.partial(dynamic_guidance, pipe, before, after, timesteps,
                                                   condition.record, index)
        condition.guidance = first_half
        return condition

    return dynamic
