"""A launcher's environment on this machine: ``world_size`` processes of one command with
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as ``accelerate launch`` and
``torchrun`` set them (gloo on the CPU runs them as nccl runs them on GPUs)."""

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT = 600  # seconds for every process of a launch together; the tests' launches take minutes at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, command: list[str], logs, timeout: float = LAUNCH_TIMEOUT,
           rank_env: dict[int, dict] | None = None) -> None:
    """``command`` (arguments after ``python``: a script and its flags, or ``-m module ...``) as
    ``world_size`` processes of one thread each, logging to ``logs``/world{N}_rank{R}.log;
    ``rank_env``: further variables of some ranks (a planned crash). A process that fails, or a
    launch past ``timeout``, ends the launch (the others are killed) with the failed log's tail."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", WORLD_SIZE=str(world_size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    paths = [logs / f"world{world_size}_rank{r}.log" for r in range(world_size)]
    runs = []
    for rank, path in enumerate(paths):
        with open(path, "w") as log:  # a file, not a pipe: a full pipe would stall the process
            runs.append(subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank),
                                                  **(rank_env or {}).get(rank, {}))))
    deadline = time.monotonic() + timeout
    try:
        while any(run.poll() is None for run in runs):
            failed = [r for r, run in enumerate(runs) if run.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
            run.wait()
    for rank, run in enumerate(runs):
        if run.returncode != 0:
            raise AssertionError(f"rank {rank} of {world_size}: rc {run.returncode}\n{paths[rank].read_text()[-3000:]}")
