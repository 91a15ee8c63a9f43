"""Table 1's plan against its run on the test bed: runs ``testbed.table1`` (the demo's size
unless its flags say otherwise) into a fresh folder and prints, per step, the projected and
the measured seconds and their ratio, marking every step over a minute whose measured time
is outside the projection ± 30% (experiments/plan.py).

    python -m benchmarks.plan                                            # the demo (~13 min on 2 cores)
    python -m benchmarks.plan --vm 1 --tm 1 --steps 20 --num_samples 4   # a smaller run
"""

from __future__ import annotations

import tempfile
import time

from experiments import plan
from testbed import table1
from utils import cli


def comparison(cost: dict) -> str:
    """The report's projected and measured seconds per step as a table, long steps outside the
    tolerance marked, and how many long steps are within it."""
    lines = ["| step | projected s | measured s | measured / projected | |", "|---|---|---|---|---|"]
    long_steps = within = 0
    for row in cost["steps"]:
        projected, measured, ratio = row["projected_seconds"], row["measured_seconds"], row["ratio"]
        flag = ""
        if measured is not None and measured > plan.LONG_STEP:
            long_steps += 1
            inside = ratio is not None and abs(ratio - 1) <= plan.TOLERANCE
            within += inside
            flag = "within ±30%" if inside else "OUTSIDE ±30%"
        lines.append(f"| {row['step']} | {plan.fmt(projected)} | {plan.fmt(measured)} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {flag} |")
    total = cost["total"]
    lines.append(f"| **total** | {plan.fmt(total['projected_seconds'])} | {plan.fmt(total['measured_seconds'])} | "
                 f"{total['measured_seconds'] / total['projected_seconds']:.2f} | |")
    lines.append(f"\n{within} of {long_steps} steps over {plan.LONG_STEP:.0f} s within ±{plan.TOLERANCE:.0%}; "
                 f"calibrated on {cost['device']} in {cost['calibration_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = cli.parser_for(__doc__)
    table1.add_args(parser)
    parser.set_defaults(log_level="ERROR")
    args = cli.parse(parser, argv)
    if args.plan:
        raise ValueError("--plan: the benchmark runs the table; python -m testbed.table1 --plan shows the plan alone")
    with tempfile.TemporaryDirectory() as folder:
        args.output = args.output or folder
        start = time.perf_counter()
        report = table1.run(args)
        wall = time.perf_counter() - start
    cost = report[plan.REPORT_KEY]
    print("\n" + comparison(cost) + f"; the whole command took {plan.seconds_text(wall)}")
    return dict(cost=cost, wall_seconds=wall)


if __name__ == "__main__":
    cli.run(main)
