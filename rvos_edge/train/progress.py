"""The progress bar of a training run: its steps, or the seconds of its time budget when it has one.

    bar = TrainingBar("clip demo", start, opts.steps, opts.time_budget)
    for step in range(start, opts.steps):
        ...
        bar.advance(step + 1, time.perf_counter() - t0, loss=f"{loss:.3f}")
    bar.close()

A run with `--time-budget` stops by the clock, usually long before `--steps` (the GPU path
passes a million), so a bar over steps would promise an end it never reaches; with a budget the
bar counts its seconds and names the step reached.
"""
from __future__ import annotations

from typing import IO

from tqdm import tqdm


class TrainingBar:
    """tqdm over the steps [start, steps), or over `time_budget` seconds (then the postfix names the step)."""

    def __init__(self, desc: str, start: int, steps: int, time_budget: float | None = None, *,
                 disable: bool = False, file: IO[str] | None = None) -> None:
        self.time_budget = time_budget
        if time_budget is None:
            self.bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=disable, file=file)
        else:
            self.bar = tqdm(total=round(time_budget), desc=desc, disable=disable, file=file,
                            bar_format="{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]")

    def advance(self, step: int, elapsed: float, **postfix: str) -> None:
        """One more step done: `step` steps in all, `elapsed` seconds into this leg."""
        if self.time_budget is None:
            self.bar.update(1)
        else:
            self.bar.update(min(round(elapsed), self.bar.total) - self.bar.n)
            postfix = {"step": str(step), **postfix}
        self.bar.set_postfix(postfix)

    def close(self) -> None:
        self.bar.close()
