"""Sharding prompts over processes (`accelerate launch` / `torchrun`, one per GPU).

Each process takes every N-th prompt (a disjoint, deterministic shard) and writes its own
part file (kept, so --resume works per process); the last process to finish merges the
parts into the file one process writes.
No process group is needed: the launcher's RANK and WORLD_SIZE are enough.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Callable


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

