"""Planned crashes for the crash test: ``NEMO_CRASH_AT=point:n`` kills the process with SIGKILL
at the n-th time it reaches the named point (no cleanup, no flush: what a power cut or the
OOM killer does).

Points the long commands pass:
  ``file_written``  an atomic output's temporary is complete, before its rename (utils.outputs)
  ``row_written``   a result row is flushed (utils.files.RowWriter)
  ``unet_step``     a denoising step of a generation ends (utils.generation; the pipeline gets
                    a step callback only while this point is planned)
  ``prompt_done``   a prompt's images and record are written (utils.generation)
  ``update_done``   an update of adversarial fine-tuning ends (script 9)
Unset, every point is an environment look-up. Torch-free.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_VARIABLE = "NEMO_CRASH_AT"
POINTS = ("file_written", "row_written", "unet_step", "prompt_done", "update_done")
_reached: Counter = Counter()


def planned_crash() -> tuple[str, int] | None:
    """The (point, n) of ``NEMO_CRASH_AT``, None when unset."""
    value = os.environ.get(CRASH_VARIABLE)
    if not value:
        return None
    point, _, count = value.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{CRASH_VARIABLE}={value!r}: expected POINT:N with N >= 1 and POINT one of {list(POINTS)}")
    return point, int(count)


def crash_point(point: str) -> None:
    """Kill this process here if ``NEMO_CRASH_AT`` asks for this point and occurrence."""
    plan = planned_crash()
    if plan is None or plan[0] != point:
        return
    _reached[point] += 1
    if _reached[point] == plan[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def step_callback():
    """The pipeline's ``callback_on_step_end`` that passes ``unet_step``, or None when no crash
    is planned there (production calls get no callback)."""
    plan = planned_crash()
    if plan is None or plan[0] != "unet_step":
        return None

    def callback(_pipeline, _step, _timestep, callback_kwargs):
        crash_point("unet_step")
        return callback_kwargs

    return callback
