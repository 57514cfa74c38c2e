"""The batches of a training run, one per step, made in worker processes when asked.

    for step, batch in zip(range(start, stop), step_batches(make, start, stop, workers=15)):
        ...

`make(step)` must be a picklable callable (a module-level function, or a functools.partial
of one) whose result depends on `step` alone: every batch of the synthetic world is a
function of (seed, step), so the batches are the same whatever the number of workers, and a
run that stops early (a time budget) simply drops the ones made ahead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import cv2
from torch.utils.data import DataLoader, Dataset

from rvos_edge.errors import UserError

T = TypeVar("T")
PREFETCH = 4
"""Batches each worker makes ahead of the training loop."""


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


def step_batches(make: Callable[[int], T], start: int, stop: int, workers: int = 0) -> Iterator[T]:
    """make(start), make(start + 1), ..., make(stop - 1) in order: in this process when
    workers == 0, else made ahead by `workers` processes (a torch DataLoader, items not collated)."""
    if workers == 0:
        return (make(step) for step in range(start, stop))
    loader = DataLoader(StepBatches(make, start, stop), batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=PREFETCH, worker_init_fn=_one_thread, collate_fn=_as_is)
    return iter(loader)


def check_loop_options(time_budget: float | None, workers: int, probe_every: int = 0) -> None:
    """UserError unless --time-budget > 0 (when given), --workers >= 0 and --probe-every >= 0."""
    if time_budget is not None and time_budget <= 0:
        raise UserError(f"--time-budget must be > 0 seconds, got {time_budget:g}")
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    if probe_every < 0:
        raise UserError(f"--probe-every must be >= 0, got {probe_every}")
