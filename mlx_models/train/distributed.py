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
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from ..errors import MLXModelsError


class DistributedError(MLXModelsError):
    """Another rank is gone: its connection was lost, or it never answered."""


@dataclass(eq=False)  # hashed by identity: one watchdog per World
class World:
    group: mx.distributed.Group | None  # None: one process, no collectives
    rank: int = 0
    size: int = 1
    timeout: float = 600.0  # seconds a collective may wait for the other ranks
    _waiting: list = field(default_factory=list)  # [(what, since)] while a collective is pending

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
                    "was killed); the checkpoints written so far are kept: continue with --resume"
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
                    print(
                        f"error: rank {world.rank}: waited {world.timeout:.0f} s for the other ranks during "
                        f"{what} (a rank hung or died); stopping. Continue with --resume",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(3)

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
            "with mlx.launch -n N, or run train.py directly for one"
        ) from e
    if group.size() == 1:
        return World(None)
    return World(group, group.rank(), group.size())
