"""Sharding prompts over processes (`accelerate launch` / `torchrun`, one per GPU).

Each process takes every N-th prompt (a disjoint, deterministic shard) and writes its own
part file (kept, so --resume works per process); the last process to finish merges the
parts into the file one process writes.
No process group is needed: the launcher's RANK and WORLD_SIZE are enough.

A step whose result needs every process's share (a sum over all prompts) opens the
launcher's process group instead (``process_group``): the shares are gathered to every
process (``gather_by_index``), one process writes (``main_process_first``, ``barrier``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        """This process's shard from the launcher's environment (one process: rank 0 of 1)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def indices(self, total: int, limit: int | None = None) -> list[int]:
        """Prompt indices of this shard among the first ``limit`` of ``total``."""
        return list(range(total if limit is None else min(total, limit)))[self.rank::self.world_size]

    def part(self, path: str) -> str:
        """Where this process writes: ``path`` itself when it runs alone."""
        return path if self.world_size == 1 else f"{path}.part{self.rank}of{self.world_size}"

    def finish(self, path: str, merge: Callable[[list[str], str], None]) -> bool:
        """Mark this part done; the process that sees every part done merges them into
        ``path`` and returns True (so does a single process)."""
        if self.world_size == 1:
            return True
        open(self.part(path) + ".done", "w").close()
        parts = [Shard(r, self.world_size).part(path) for r in range(self.world_size)]
        if not all(os.path.exists(p + ".done") for p in parts):
            return False
        try:
            os.mkdir(path + ".merging")  # atomic: only one process merges
        except FileExistsError:
            return False
        merge(parts, path)
        if os.path.exists(parts[0] + ".settings.json"):
            shutil.copyfile(parts[0] + ".settings.json", path + ".settings.json")
        for p in parts:
            os.remove(p + ".done")
        os.rmdir(path + ".merging")
        return True


# How long a collective waits for the slowest process. A step one process runs while the others
# wait at the next barrier (writing a table, fine-tuning's checkpoint) can take hours at SD's
# size; torch's default (30 min for gloo, 10 min for nccl) would end such a run (ours).
COLLECTIVE_TIMEOUT_HOURS = 24


@contextlib.contextmanager
def process_group(device) -> Iterator[Shard]:
    """This process's shard, inside the launcher's default process group when WORLD_SIZE > 1
    (from its MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE): gloo for a CPU ``device``, nccl for
    CUDA (``device`` becomes the current GPU). The group is destroyed on exit, even when the
    body raises; inside a group already open (a step of Table 1) it is that group, left open.
    One process: no group, every helper below does nothing."""
    shard = Shard.from_env()
    if shard.world_size == 1:
        yield shard
        return
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield shard
        return
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # nccl's object collectives use the current GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=shard.rank, world_size=shard.world_size,
                            timeout=datetime.timedelta(hours=COLLECTIVE_TIMEOUT_HOURS))
    try:
        yield shard
    finally:
        dist.destroy_process_group()


def gather_by_index(shard: Shard, items: dict[int, T]) -> dict[int, T]:
    """Every process's ``items`` (index -> picklable value, disjoint indices) on every process,
    sorted by index; values arrive bit for bit (one process: ``items`` sorted)."""
    merged = dict(items)
    if shard.world_size > 1:
        import torch.distributed as dist

        parts = [None] * shard.world_size
        dist.all_gather_object(parts, items)
        merged = {k: v for part in parts for k, v in part.items()}
        if len(merged) != sum(len(part) for part in parts):
            raise ValueError("processes gathered overlapping indices")
    return dict(sorted(merged.items()))


def barrier(shard: Shard) -> None:
    """Wait until every process of the group gets here (one process: return at once)."""
    if shard.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def main_process_result(shard: Shard, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 alone (what only one process should do: measure, write), its
    picklable result on every process once rank 0 has it."""
    result = compute() if shard.rank == 0 else None
    if shard.world_size > 1:
        import torch.distributed as dist

        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result


@contextlib.contextmanager
def main_process_first(shard: Shard) -> Iterator[None]:
    """Rank 0 runs the body first; the others run it once rank 0 has finished it (e.g. rank 0
    claims or clears an output, the others then find it claimed)."""
    if shard.rank > 0:
        barrier(shard)
    yield
    if shard.rank == 0:
        barrier(shard)
