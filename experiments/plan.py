"""The cost before the work: every step of a Table-1 run (script 6, ``testbed.table1``) with
its units of work and its projected time on the device it runs on, then, after the run, the
projection beside what each step took.

``experiments.table1.plan_steps`` lists the steps in the order its ``run_steps`` runs them.
Each is a ``Step`` whose step module counts its own work from the flags the table runs it
with (``step_cost``, the module's ``cost``: the prompts its output does not hold yet, images,
U-Net calls by batch shape, attack steps; a method's own passes come from its registry
entry). ``calibrate`` loads the model and times a few U-Net calls of every batch shape the
steps use, the VAE decode, the text encoder and one prompt's images through the table's
measures (``utils.cost``); a step's projected seconds are its counts times those times,
divided by the processes of a launch for the steps they share. Counts that depend on the data
(NeMo's localization, optimizations that stop at a target) are estimates, and the printout
says which. ``Ledger`` times each step of the real run and puts the projection beside it
(table1.md's "Cost: projected and measured").
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from utils import cli
from utils.cost import Timings, Work

LOCALIZATION, PRUNING, FINETUNING, METRICS = ("localization (script 3)", "Wanda collection (script 7)",
                                              "fine-tuning (script 9)", "metrics")
REPORT_KEY = "cost_projected_and_measured"  # table1.json's section
LONG_STEP = 60.0  # seconds: a step this long should be projected within TOLERANCE (ours)
TOLERANCE = 0.3  # ours: measured / projected within 1 +- this for every long step on the test bed


def generation_step(row: str, held_out: bool = False) -> str:
    return f"generation{' (held-out prompts)' if held_out else ''}: {row}"


def detection_step(comparison: str) -> str:
    return f"detection: {comparison}"


def attack_step(mitigation: str) -> str:
    return f"attack: {mitigation}"


@dataclass
class Step:
    """A step of the run: its work, whether the processes of a launch share it, and its
    projected seconds once calibrated."""

    name: str
    work: Work
    shared: bool = True
    seconds: float | None = None


def step_cost(name: str, module, argv: list[str] = (), shared: bool = True, **values) -> Step:
    """A step module (``add_args``, ``cost``) with the flag dests ``values`` it is run with."""
    return Step(name, module.cost(cli.step_args(module.add_args, argv, **values)), shared)


def calibrate(steps: list[Step], args, measures=None, processes: int = 1) -> Timings:
    """Load ``args``' model (-v, --device, --dtype), time every U-Net shape of ``steps``, the
    VAE, the text encoder and (with ``measures``) one prompt's images through the table's
    measures; set each step's projected seconds (a shared step's divided by ``processes``)."""
    from utils.cost import calibrate as time_calls
    from utils.models import load_pipeline_from_args

    start = time.perf_counter()
    pipe = load_pipeline_from_args(args)
    loaded = time.perf_counter() - start
    shapes = {(p.batch, p.kind) for step in steps for p in step.work.passes}
    timings = time_calls(pipe, shapes, args.num_samples, loaded)
    if measures is not None:
        timings.measure = measure_seconds(pipe, measures, args.num_samples)
    for step in steps:
        step.seconds = timings.seconds(step.work) / (processes if step.shared else 1)
    timings.calibration = time.perf_counter() - start
    return timings


def measure_seconds(pipe, measures, images: int) -> float:
    """Seconds per image of the table's per-prompt measures (``tables.folder_scores``) on one
    prompt of ``images`` images decoded from random latents (their own original)."""
    import torch

    from experiments import tables
    from utils.diffusion import latent_shape
    from utils.generation import image_path
    from utils.outputs import save_image

    with torch.no_grad():
        latents = torch.randn(images, *latent_shape(pipe.unet), device=pipe.vae.device, dtype=pipe.vae.dtype)
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample,
                                                   output_type="pil")
    with tempfile.TemporaryDirectory() as folder:
        for j, image in enumerate(decoded):
            save_image(image_path(folder, 0, j), image)
        plain = {0: measures.embed(decoded)}
        start = time.perf_counter()
        tables.folder_scores(folder, plain, {0: image_path(folder, 0, 0)}, {0: "a photo"}, measures)
        return (time.perf_counter() - start) / images


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {rest:02d} s"


def plan_markdown(steps: list[Step], timings: Timings, processes: int = 1) -> str:
    """The plan as a table: each step's units and projected time, the total, and the estimates."""
    notes = list(dict.fromkeys(step.work.estimate for step in steps if step.work.estimate))
    lines = [f"### Plan: {len(steps)} steps on {timings.device}"
             + (f", {processes} processes sharing each step but fine-tuning" if processes > 1 else ""), "",
             "| step | prompts | images | U-Net sample-forwards | U-Net sample-backwards | attack steps "
             "| images measured | projected |", "|---|---|---|---|---|---|---|---|"]
    for step in steps:
        work = step.work
        mark = f" [{notes.index(work.estimate) + 1}]" if work.estimate else ""
        lines.append(f"| {step.name} | {work.prompts} | {work.images} | {work.forwards:,.0f} | {work.backwards:,.0f} "
                     f"| {work.attack_steps} | {work.measured} | {seconds_text(step.seconds)}{mark} |")
    total = sum(step.seconds or 0.0 for step in steps)
    total_of = lambda unit: sum(getattr(step.work, unit) for step in steps)
    lines.append(f"| **total** | | | {total_of('forwards'):,.0f} | {total_of('backwards'):,.0f} "
                 f"| {total_of('attack_steps')} | {total_of('measured')} | **{seconds_text(total)}** |")
    lines += ["", timings.describe()]
    lines += [f"[{k}] {note}" for k, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


@dataclass
class Ledger:
    """The planned steps and, as the run goes, the seconds each step took in this process."""

    steps: list[Step]
    timings: Timings | None = None
    processes: int = 1
    measured: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the body as step ``name`` (added to what it took before)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.measured[name] = self.measured.get(name, 0.0) + time.perf_counter() - start

    def rows(self) -> list[dict]:
        """Per step (planned, then any step timed that was not planned): units, projected and
        measured seconds and their ratio (measured / projected)."""
        rows = []
        planned = {step.name: step for step in self.steps}
        for name in list(planned) + [name for name in self.measured if name not in planned]:
            step = planned.get(name)
            work = step.work if step else Work()
            projected, measured = step.seconds if step else None, self.measured.get(name)
            rows.append(dict(step=name, prompts=work.prompts, images=work.images, forwards=work.forwards,
                             backwards=work.backwards, attack_steps=work.attack_steps, measured_images=work.measured,
                             estimate=work.estimate, projected_seconds=projected, measured_seconds=measured,
                             ratio=measured / projected if projected and measured is not None else None))
        return rows

    def report(self) -> dict:
        rows = self.rows()
        total = lambda key: sum(row[key] or 0.0 for row in rows)
        return dict(device=self.timings.device if self.timings else None, processes=self.processes,
                    calibration_seconds=self.timings.calibration if self.timings else None, steps=rows,
                    total={key: total(key) for key in ("projected_seconds", "measured_seconds")})

    def markdown(self) -> str:
        """The section "Cost: projected and measured" of table1.md."""
        report = self.report()
        lines = ["### Cost: projected and measured", "",
                 f"Projected before the run from a calibration on {report['device']} "
                 f"({seconds_text(report['calibration_seconds'])}); measured in the process that writes the table. "
                 f"Steps over {LONG_STEP:.0f} s outside measured / projected 1 ± {TOLERANCE} are marked *.", "",
                 "| step | projected s | measured s | measured / projected |", "|---|---|---|---|"]
        for row in report["steps"]:
            ratio = row["ratio"]
            off = ratio is not None and row["measured_seconds"] > LONG_STEP and abs(ratio - 1) > TOLERANCE
            lines.append(f"| {row['step']} | {fmt(row['projected_seconds'])} | {fmt(row['measured_seconds'])} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'}{' *' if off else ''} |")
        total = report["total"]
        ratio = total["measured_seconds"] / total["projected_seconds"] if total["projected_seconds"] else None
        lines.append(f"| **total** | {fmt(total['projected_seconds'])} | {fmt(total['measured_seconds'])} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
        return "\n".join(lines) + "\n"


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def show(steps: list[Step], timings: Timings, processes: int = 1) -> str:
    """Print the plan; returns its markdown."""
    text = plan_markdown(steps, timings, processes)
    print(text, flush=True)
    return text


def prepared(steps: list[Step], args, measures=None, shard=None) -> Ledger:
    """The steps of a run calibrated on ``args``' model and printed: what a Table-1 run does
    first. Under a launcher (``shard``) every process calibrates at once, so that the times hold
    what the processes share (a CPU's cores and memory); rank 0 prints the plan."""
    processes = shard.world_size if shard else 1
    timings = calibrate(steps, args, measures, processes)
    if shard is None or shard.rank == 0:
        show(steps, timings, processes)
    return Ledger(steps, timings, processes)


@contextmanager
def timed(ledger: Ledger | None, name: str) -> Iterator[None]:
    """The body timed as step ``name`` of ``ledger`` (None: not timed)."""
    if ledger is None:
        yield
    else:
        with ledger.step(name):
            yield

