"""The test-bed Table 1 with one process against two under torchrun: wall time of each,
whether the two tables agree (all but the timing columns; the largest relative difference
where they do not) and the neurons are the same, and
each run's projected seconds per step beside the measured (``benchmarks.plan``).

One process gets both cores (``OMP_NUM_THREADS=2``); torchrun's two processes get one each.
Flags after ``--`` go to ``testbed.table1`` (default: the demo's size).

    PYTHONPATH=. python -m benchmarks.processes --output bench_processes
    PYTHONPATH=. python -m benchmarks.processes --output bench_processes -- --bed planted --memorization_threshold 0.428
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pandas as pd

from benchmarks import plan as plan_benchmark
from experiments import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# keys of what the number of processes changes: time, the count itself, the plan (a continued
# launch plans only what is left)
TIMED = ("second", "processes", "projected")


def comparable(value, output: str):
    """A Table-1 report without its timings, the run's folder written as <out>."""
    if isinstance(value, dict):
        return {k: comparable(v, output) for k, v in value.items() if not any(word in k for word in TIMED)}
    if isinstance(value, list):
        return [comparable(v, output) for v in value]
    if isinstance(value, str):
        return value.replace(output, "<out>")
    return value


def differing(one, two, path: str = "") -> list[tuple[str, object, object]]:
    """(path, value in one, value in two) wherever two comparable reports differ."""
    if isinstance(one, dict) and isinstance(two, dict):
        return [d for k in sorted(set(one) | set(two), key=str) for d in differing(one.get(k), two.get(k), f"{path}/{k}")]
    if isinstance(one, list) and isinstance(two, list) and len(one) == len(two):
        return [d for i, (a, b) in enumerate(zip(one, two)) for d in differing(a, b, f"{path}[{i}]")]
    return [] if one == two else [(path, one, two)]


def largest_relative_difference(pairs: list[tuple[str, object, object]]) -> float:
    """The largest |a - b| / |a| over the numbers of ``differing``'s pairs."""
    return max([abs(a - b) / max(abs(a), 1e-12) for _, a, b in pairs
                if isinstance(a, (int, float)) and isinstance(b, (int, float))], default=0.0)


def timed_run(command: list[str], threads: int, log: str) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        run = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads)))
    if run.returncode:
        raise SystemExit(f"{' '.join(command)} failed (rc {run.returncode}); see {log}")
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder of both runs (one/, two/) and their logs")
    parser.add_argument("table_args", nargs="*", help="flags of testbed.table1, after --")
    args = parser.parse_args(argv)
    outputs = {n: os.path.abspath(os.path.join(args.output, name)) for n, name in ((1, "one"), (2, "two"))}
    if any(os.path.exists(out) for out in outputs.values()):
        raise SystemExit(f"--output {args.output} holds runs already (one/, two/): a continued run would time "
                         "only what was left; give a new folder")
    os.makedirs(args.output, exist_ok=True)
    table = ["-m", "testbed.table1", *args.table_args]
    seconds = {
        1: timed_run([sys.executable, *table, "--output", outputs[1]], 2, os.path.join(args.output, "one.log")),
        2: timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      "--module", *table[1:], "--output", outputs[2]], 1, os.path.join(args.output, "two.log")),
    }
    raw = {n: json.load(open(os.path.join(out, "table1.json"))) for n, out in outputs.items()}
    reports = {n: comparable(report, outputs[n]) for n, report in raw.items()}
    pairs = differing(reports[1], reports[2])
    found = [f"{path}: {a!r} != {b!r}" for path, a, b in pairs]
    neurons = {n: pd.read_csv(os.path.join(out, "memorization_statistics.csv"), sep=";")[["Initial Neurons", "Refined Neurons"]]
               for n, out in outputs.items()}
    if not neurons[1].equals(neurons[2]):
        found.append("memorization_statistics.csv: other neurons")
    result = dict(seconds=seconds, ratio=seconds[1] / seconds[2], differences=found,
                  largest_relative_difference=largest_relative_difference(pairs))
    for n, label in ((1, "1 process x 2 threads"), (2, "2 processes x 1 thread")):
        print(f"\n{label}: the plan against the run\n\n" + plan_benchmark.comparison(raw[n][plan.REPORT_KEY]))
    print(f"1 process x 2 threads: {seconds[1]:.0f} s; 2 processes x 1 thread (torchrun): {seconds[2]:.0f} s; "
          f"speed-up {result['ratio']:.2f}x")
    print("tables: " + ("identical (all but the timing columns)" if not found else
                        f"{len(found)} differences, the largest {result['largest_relative_difference']:.2%} of the "
                        "value, e.g. " + "; ".join(found[:3])))
    print("neurons: " + ("other neurons" if "memorization_statistics.csv: other neurons" in found else "the same"))
    print("(1 thread and 2 threads round convolutions differently; with the same threads per process the tables "
          "are identical: tests/test_distributed_table1.py)")
    return result


if __name__ == "__main__":
    main()
