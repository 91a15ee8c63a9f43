"""The test bed's Table 1 under a launcher: two processes (gloo, CPU) share every step and
write the table one process writes; a launch killed half-way continues when run again."""

import json
import os

import pandas as pd
import pytest

from tests.launcher import launch
from utils.crashpoints import CRASH_VARIABLE

# The reduced demo of tests/test_testbed.py: every row, both detectors, the held-out runs.
TABLE = ["-m", "testbed.table1", "--vm", "1", "--tm", "1", "--steps", "4", "--num_samples", "2", "--quality", "2",
         "--unmemorized", "3"]
TIMED = ("second", "processes", "projected")  # keys of what the processes' number changes: time, the count
# itself, the plan (a continued launch plans only what is left)


def comparable(value, output: str):
    """The report without its timings, the run's folder written as <out>."""
    if isinstance(value, dict):
        return {k: comparable(v, output) for k, v in value.items() if not any(word in k for word in TIMED)}
    if isinstance(value, list):
        return [comparable(v, output) for v in value]
    if isinstance(value, str):
        return value.replace(output, "<out>")
    return value


def test_two_processes_write_the_table_one_process_writes_and_continue_after_a_kill(tmp_path):
    outputs = {n: str(tmp_path / f"table{n}") for n in (1, 2)}
    launch(1, TABLE + ["--output", outputs[1]], tmp_path)
    # rank 1 is killed after its 6th prompt of generations (the rows' script 4 runs); rank 0 loses
    # its peer at the next barrier, or is killed by the launch
    with pytest.raises(AssertionError, match=r"rank \d of 2: rc"):
        launch(2, TABLE + ["--output", outputs[2]], tmp_path, rank_env={1: {CRASH_VARIABLE: "prompt_done:6"}})
    assert not os.path.exists(os.path.join(outputs[2], "table1.json"))
    launch(2, TABLE + ["--output", outputs[2]], tmp_path)
    assert "continuing" in (tmp_path / "world2_rank0.log").read_text()

    reports = {n: json.load(open(os.path.join(out, "table1.json"))) for n, out in outputs.items()}
    assert comparable(reports[2], outputs[2]) == comparable(reports[1], outputs[1])
    neurons = {n: pd.read_csv(os.path.join(out, "memorization_statistics.csv"), sep=";")
               for n, out in outputs.items()}
    for column in ("Initial Neurons", "Refined Neurons"):
        assert neurons[2][column].tolist() == neurons[1][column].tolist()
    assert open(os.path.join(outputs[2], "table1.md")).read().count("|") > 50
