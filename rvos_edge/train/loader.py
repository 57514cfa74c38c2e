"""The batches of a training run, one per step, made in worker processes when asked.

    for step, batch in zip(range(start, stop), step_batches(make, start, stop, workers=15)):
        ...

`make(step)` must be a picklable callable (a module-level function, or a functools.partial
of one) whose result depends on `step` alone: every batch of the synthetic world is a
function of (seed, step), so the batches are the same whatever the number of workers, and a
run that stops early (a time budget) simply drops the ones made ahead. Workers hand their
tensors over through shared memory (/dev/shm), so there are only as many as fit the
batches in flight in half of its free space (`fitting_workers`). Workers are spawned (a fresh
interpreter each), never forked from the training process, whose thread pools could hold locks.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import cv2
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rvos_edge.errors import UserError

T = TypeVar("T")
PREFETCH = 2
"""Batches each worker makes ahead of the training loop."""
SHARED_MEMORY = "/dev/shm"


class StepBatches(Dataset, Generic[T]):
    """Item k: make(start + k)."""

    def __init__(self, make: Callable[[int], T], start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> T:
        return self.make(self.start + k)


def _as_is(item: T) -> T:
    """The DataLoader's collate step: none (a step's batch is already made)."""
    return item


def _one_thread(_: int) -> None:
    """Worker start: one OpenCV thread, so that N workers use N cores (torch already uses one)."""
    cv2.setNumThreads(1)


def tensor_bytes(item: Any) -> int:
    """Bytes of the tensors in `item`: a tensor, a list or tuple of items, or a dataclass of them."""
    if isinstance(item, Tensor):
        return item.nbytes
    if isinstance(item, (list, tuple)):
        return sum(tensor_bytes(x) for x in item)
    if dataclasses.is_dataclass(item):
        return sum(tensor_bytes(getattr(item, f.name)) for f in dataclasses.fields(item))
    return 0


def fitting_workers(workers: int, batch_bytes: int, shared: str = SHARED_MEMORY) -> int:
    """At most `workers`, as many as keep workers * PREFETCH batches of `batch_bytes` within half
    the free space of `shared` (no limit where it does not exist)."""
    try:
        free = shutil.disk_usage(shared).free
    except OSError:
        return workers
    return max(0, min(workers, free // 2 // max(1, PREFETCH * batch_bytes)))


def step_batches(make: Callable[[int], T], start: int, stop: int, workers: int = 0) -> Iterator[T]:
    """make(start), make(start + 1), ..., make(stop - 1) in order. The first is made here; with
    workers > 0 the others are made ahead by that many processes (a torch DataLoader, items not
    collated), or fewer when shared memory is short for them (fitting_workers; said on stderr)."""
    if start >= stop:
        return
    first = make(start)
    yield first
    fit = fitting_workers(workers, tensor_bytes(first))
    if fit < workers:
        print(f"training batches: {fit} worker processes instead of {workers}: {SHARED_MEMORY} has room for "
              f"no more batches of {tensor_bytes(first) / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    if fit == 0:
        yield from (make(step) for step in range(start + 1, stop))
        return
    # spawned, not forked: a fork of a process whose OpenCV / OpenMP thread pools hold a lock deadlocks
    yield from DataLoader(StepBatches(make, start + 1, stop), batch_size=None, shuffle=False, num_workers=fit,
                          prefetch_factor=PREFETCH, worker_init_fn=_one_thread, collate_fn=_as_is,
                          multiprocessing_context="spawn")


def check_loop_options(time_budget: float | None, workers: int, probe_every: int = 0) -> None:
    """UserError unless --time-budget > 0 (when given), --workers >= 0 and --probe-every >= 0."""
    if time_budget is not None and time_budget <= 0:
        raise UserError(f"--time-budget must be > 0 seconds, got {time_budget:g}")
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    if probe_every < 0:
        raise UserError(f"--probe-every must be >= 0, got {probe_every}")
