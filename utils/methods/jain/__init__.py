"""Jain et al. (CVPR 2025), "Classifier-Free Guidance inside the Attraction Basin May Cause
Memorization": no (or opposite) guidance until a transition point, the usual guidance after
it; script 4 ``--jain_static``, ``--jain_opposite`` and ``--jain_dynamic``, three rows of
Table 1. The code in ``guidance``.

Defaults are the authors' (anubhav1997/mitigating_memorization, commit 44eeb2e):

- static transition point: ``generate_test_dataset_stp.py`` with the README's command
  ``--guidance_change_step 500 --guidance_scale 0.0 --guidance_scale_later 7.5``. Step i is
  guided with ``--guidance_scale`` while its timestep t > ``--guidance_change_step``, with
  ``--guidance_scale_later`` from there on; both branches are computed at every step, so
  "guidance off" is scale 0: the unconditional prediction alone. (The script's own argparse
  defaults, change step 0 and both scales 7.5, are plain guidance at 7.5.)
- opposite guidance: the same script with the README's second command,
  ``--guidance_change_step 650 --guidance_scale -2.0 --guidance_scale_later 7.5``.
- dynamic transition point: ``generate_test_dataset_dtp.py`` (settings in the code, no
  flags): scale 1.0 (the conditional prediction alone) until the step at which
  ||eps_u - eps_c|| of the image rises again after falling (the step after its first local
  minimum), 7.5 from that step on.

The later scale is the run's ``-g/--guidance_scale`` here unless ``--jain_guidance_scale_later``
is given (theirs: 7.5; Table 1 guides every row at the run's scale).
"""

from utils.methods.registry import Mitigation, Row, register

SOURCE = "anubhav1997/mitigating_memorization"
JAIN_STATIC_CHANGE_STEP = 500.0  # README, static transition point: --guidance_change_step 500
JAIN_STATIC_GUIDANCE_SCALE = 0.0  # README: --guidance_scale 0.0 (no guidance: the unconditional prediction)
JAIN_OPPOSITE_CHANGE_STEP = 650.0  # README, opposite guidance: --guidance_change_step 650
JAIN_OPPOSITE_GUIDANCE_SCALE = -2.0  # README: --guidance_scale -2.0
JAIN_DYNAMIC_GUIDANCE_SCALE = 1.0  # generate_test_dataset_dtp.py: guidance_scale = 1.0 before the transition
# README and generate_test_dataset_dtp.py: 7.5 after the transition; ours: the run's -g unless given
JAIN_GUIDANCE_SCALE_LATER = None
THEIR_GUIDANCE_SCALE_LATER = 7.5


def add_options(parser) -> None:
    group = parser.add_argument_group(
        f"--jain_static, --jain_opposite, --jain_dynamic settings (defaults: {SOURCE} README commands and "
        "generate_test_dataset_dtp.py)")
    group.add_argument("--jain_static_change_step", type=float, default=JAIN_STATIC_CHANGE_STEP,
                       help="--jain_static: guidance scale --jain_static_guidance_scale while the step's timestep is "
                            "above this, the later scale from there on (their --guidance_change_step)")
    group.add_argument("--jain_static_guidance_scale", type=float, default=JAIN_STATIC_GUIDANCE_SCALE,
                       help="--jain_static: guidance scale before the transition point (their --guidance_scale; 0: "
                            "the unconditional prediction alone)")
    group.add_argument("--jain_opposite_change_step", type=float, default=JAIN_OPPOSITE_CHANGE_STEP,
                       help="--jain_opposite: the same, with the opposite guidance's transition point")
    group.add_argument("--jain_opposite_guidance_scale", type=float, default=JAIN_OPPOSITE_GUIDANCE_SCALE,
                       help="--jain_opposite: guidance scale before the transition point (negative: away from the "
                            "caption)")
    group.add_argument("--jain_dynamic_guidance_scale", type=float, default=JAIN_DYNAMIC_GUIDANCE_SCALE,
                       help="--jain_dynamic: guidance scale before each image's transition point (1: the "
                            "conditional prediction alone)")
    group.add_argument("--jain_guidance_scale_later", type=float, default=JAIN_GUIDANCE_SCALE_LATER,
                       help="guidance scale from the transition point on (their --guidance_scale_later, 7.5); "
                            "default: the run's -g/--guidance_scale")


register(Mitigation(
    "jain_static", "ours: no guidance until a fixed timestep, then the usual guidance (Jain et al., CVPR 2025, "
    "static transition point); settings below", "utils.methods.jain.guidance:prepare_static",
    add_options=add_options, rows=(Row("guidance transition point: static (Jain)", 12, "jain_static"),),
    cost="utils.methods.jain.guidance:generation_cost"))
register(Mitigation(
    "jain_opposite", "ours: opposite guidance until a fixed timestep, then the usual guidance (Jain et al., CVPR "
    "2025); settings below", "utils.methods.jain.guidance:prepare_opposite",
    add_options=add_options, rows=(Row("opposite guidance (Jain)", 12.5, "jain_opposite"),),
    cost="utils.methods.jain.guidance:generation_cost"))
register(Mitigation(
    "jain_dynamic", "ours: the conditional prediction alone until ||eps_u - eps_c|| passes its first minimum, "
    "then the usual guidance (Jain et al., CVPR 2025, dynamic transition point); settings below",
    "utils.methods.jain.guidance:prepare_dynamic",
    add_options=add_options, rows=(Row("guidance transition point: dynamic (Jain)", 12.7, "jain_dynamic"),),
    cost="utils.methods.jain.guidance:dynamic_cost"))
