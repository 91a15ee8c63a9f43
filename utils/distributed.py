"""Sharding prompts over processes (`accelerate launch` / `torchrun`, one per GPU).

Each process takes every N-th prompt (a disjoint, deterministic shard) and writes its own
part file (kept, so --resume works per process); the last process to finish merges the
parts into the file one process writes.
No process group is needed: the launcher's RANK and WORLD_SIZE are enough.

A step whose result needs every process's share (a sum over all prompts) opens the
launcher's process group instead (``process_group``): the shares are gathered to every
process (``gather_by_index``), one process writes (``main_process_first``, ``barrier``).
Training splits each batch (``Shard.batch_slice``) and sums the gradients (``sum_gradients``);
``require_same`` checks that every process holds the same weights (``weights_checksum``).
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

    def batch_slice(self, total: int) -> slice:
        """This process's contiguous part of a batch of ``total`` items one process takes whole:
        items [r * total // N, (r + 1) * total // N) (empty for some r when total < N)."""
        return slice(self.rank * total // self.world_size, (self.rank + 1) * total // self.world_size)

    def batch_share(self, total: int) -> float:
        """The share of a batch of ``total`` items in this process's part (1.0 in one process)."""
        part = self.batch_slice(total)
        return (part.stop - part.start) / total

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


# ours: tensors are summed over the processes in flat buckets of at most this many bytes (torch's
# DistributedDataParallel uses 25 MiB): a few collectives per update instead of one per weight,
# and a temporary of one bucket, not of all gradients (3.4 GB at SD's size)
ALL_REDUCE_BUCKET_BYTES = 64 * 2**20


def all_reduce_sum(shard: Shard, tensors: list) -> None:
    """Each of ``tensors`` replaced in place by its sum over the processes, a bucket of one dtype
    and device at a time (one process: nothing)."""
    if shard.world_size == 1:
        return
    import torch
    import torch.distributed as dist

    def reduce(bucket: list) -> None:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(part.view_as(t))

    bucket, size = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (tensor.dtype != bucket[0].dtype or tensor.device != bucket[0].device
                       or size + nbytes > ALL_REDUCE_BUCKET_BYTES):
            reduce(bucket)
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        reduce(bucket)


def sum_gradients(shard: Shard, parameters) -> None:
    """The gradients of ``parameters`` replaced in place by their sums over the processes. A
    parameter without a gradient here (this process's part of the batch was empty) adds zeros;
    one without a gradient on every process keeps none, as it would in one process (an
    optimizer skips it: no weight decay). One process: nothing."""
    if shard.world_size == 1:
        return
    import torch

    parameters = list(parameters)
    if not parameters:
        return
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=parameters[0].device)
    all_reduce_sum(shard, [present])
    for p, anywhere in zip(parameters, present.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum(shard, [p.grad for p in parameters if p.grad is not None])


# integer types of a tensor element's bits, by its size in bytes (weights_checksum)
_BITS_AS_INTEGER = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def weights_checksum(module) -> int:
    """The sum of every weight's bits read as an integer (int64, wrapping): exact and the same in
    any order or on any device, and different when a single weight differs in a single bit."""
    import torch

    sums = [p.detach().view(getattr(torch, _BITS_AS_INTEGER[p.element_size()])).sum(dtype=torch.int64)
            for p in module.parameters()]
    return int(torch.stack(sums).sum().item()) if sums else 0


def require_same(shard: Shard, value, what: str) -> None:
    """Raise a RuntimeError naming ``what`` and each process's ``value`` (picklable) unless every
    process holds the same (one process: nothing)."""
    values = gather_by_index(shard, {shard.rank: value})
    if len(set(map(repr, values.values()))) > 1:
        shown = ", ".join(f"rank {r}: {v!r}" for r, v in values.items())
        raise RuntimeError(f"the processes hold different {what}: {shown}")
