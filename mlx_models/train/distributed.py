"""Data parallelism on MLX's own distributed layer (``mx.distributed``, started by ``mlx.launch``).

Every rank builds the same model from the same seed and takes its share of each global batch;
gradients are summed over ranks once per optimizer step; losses, token counts and evaluation sums
are summed too; rank 0 alone writes. Without ``mlx.launch`` the world has one rank and every
collective is the identity.

A rank that dies breaks its peers' next collective ("connection lost"): they stop with one line.
A rank that hangs (MLX's ring backend can deadlock, ml-explore/mlx#4475) is caught by a watchdog:
a collective that waits longer than ``timeout`` seconds ends the process with one line naming the
rank and what it waited for.
"""

import contextlib
import functools
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from ..cli import report_end
from ..errors import ConfigError, DistributedError


@dataclass(eq=False)  # hashed by identity: one watchdog per World
class World:
    group: mx.distributed.Group | None  # None: one process, no collectives
    rank: int = 0
    size: int = 1
    timeout: float = 600.0  # seconds a collective may wait for the other ranks
    _waiting: list = field(default_factory=list)  # [(what, since)] while a collective is pending
    # What to do after a lost rank: rank 0 knows what the run kept (the trainer sets it there).
    advice: Callable[[], str] = lambda: "rank 0 says what was kept"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (the first ranks take one more on a remainder)."""
        per, extra = divmod(len(items), self.size)
        start = self.rank * per + min(self.rank, extra)
        return items[start : start + per + (self.rank < extra)]

    def sum(self, x: mx.array, what: str) -> mx.array:
        """``x`` summed over all ranks (evaluated), the watchdog armed while it waits."""
        if self.size == 1:
            return x
        with self.waiting(what):
            y = mx.distributed.all_sum(x, group=self.group)
            mx.eval(y)
        return y

    def total(self, values: np.ndarray, what: str) -> np.ndarray:
        """A NumPy array summed over all ranks (in float32 across ranks; untouched on one)."""
        if self.size == 1:
            return values
        dtype = mx.float32 if values.dtype.kind == "f" else mx.int32
        return np.array(self.sum(mx.array(values, dtype), what))

    def any(self, flag: bool, what: str) -> bool:
        """Whether any rank says ``flag``: how every rank takes the same decision."""
        return bool(self.sum(mx.array([int(flag)]), what).item())

    def check_same(self, values: dict[str, Any], what: str) -> None:
        """Every rank must hold the same ``values``: when they differ, every rank refuses at once,
        naming the keys (a hash of each key's value is compared, one collective)."""
        if self.size == 1:
            return
        keys = sorted(values)
        rows = np.zeros((self.size, len(keys)), dtype=np.int32)
        rows[self.rank] = [zlib.crc32(repr(values[k]).encode()) & 0x7FFFFFFF for k in keys]
        every = self.total(rows, f"the comparison of the ranks' {what}")
        differ = [k for k, column in zip(keys, every.T, strict=True) if len(set(column.tolist())) > 1]
        if differ:
            mine = ", ".join(f"{k}={values[k]!r}"[:80] for k in differ[:4])
            raise ConfigError(
                f"rank {self.rank}: the ranks were started with different {what} ({mine} here); "
                "start every rank with the same command (and --out), config.yaml and data"
            )

    def barrier(self, what: str) -> None:
        self.sum(mx.array([1]), what)

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Arm the watchdog for a blocking collective; a lost peer becomes a one-line error."""
        if self.size == 1:
            yield
            return
        _watchdog(self)
        self._waiting.append((what, time.monotonic()))
        try:
            yield
        except RuntimeError as e:
            if "[ring]" in str(e) or "peer" in str(e):
                raise DistributedError(
                    f"rank {self.rank}: lost the connection to another rank during {what} (it died or "
                    f"was killed); {self.advice()}"
                ) from e
            raise
        finally:
            self._waiting.pop()


@functools.cache
def _watchdog(world: "World") -> threading.Thread:
    def watch():
        while True:
            time.sleep(1.0)
            if world._waiting:
                what, since = world._waiting[-1]
                if time.monotonic() - since > world.timeout:
                    message = (
                        f"rank {world.rank}: waited {world.timeout:.0f} s for the other ranks during {what} "
                        f"(a rank hung or died), stopped; {world.advice()}"
                    )
                    os._exit(report_end(3, message, "lost"))  # no traceback: the threads are stuck

    thread = threading.Thread(target=watch, name="mlx_models-watchdog", daemon=True)
    thread.start()
    return thread


@functools.cache
def world() -> World:
    """This process's place in the run: rank and size from ``mlx.launch`` (or 0 of 1)."""
    try:
        group = mx.distributed.init()
    except RuntimeError as e:
        raise DistributedError(
            f"mx.distributed could not start ({' '.join(str(e).split())[:200]}); launch 2 or more ranks "
            "with train.py --ranks N, or run train.py without it for one"
        ) from e
    if group.size() == 1:
        return World(None)
    return World(group, group.rank(), group.size())
