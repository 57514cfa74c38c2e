"""Soak: 10,000 frames through one Segmenter on the fake ORT graphs, expression switched
mid-stream; resident memory must stay flat and every switch must restart the history."""
from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path

import numpy as np
from fake_artifacts import make_fake_artifacts

from rvos_edge.runtime import Runner, Segmenter, open_engines

FRAMES = 10_000
SWITCH_EVERY = 2_000 + 1            # not a multiple of Tc: each switch flushes a part-filled clip
TEXTS = ["the red cup", "a dog on the left", "the person in a blue coat"]


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Counting(Runner):
    """Passes through, remembering only has_history and whether history was all zeros."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.inputs, self.outputs = inner, inner.name, inner.inputs, inner.outputs
        self.calls = 0
        self.gates: list[tuple[float, bool]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if "has_history" in feeds:
            self.gates.append((float(feeds["has_history"][0, 0]), not feeds["history"].any()))
        return self.inner.run(feeds)


def test_soak_memory_flat_and_history_reset_on_switch(tmp_path: Path) -> None:
    e = open_engines(make_fake_artifacts(tmp_path / "art"), threads=1)
    e = dataclasses.replace(e, text=Counting(e.text), clip=Counting(e.clip))
    seg = Segmenter(e)
    rng = np.random.RandomState(0)
    frames = [rng.randint(0, 256, s).astype(np.uint8) for s in ((64, 64, 3), (48, 80, 3), (96, 72, 3))]
    seen, switch_calls, baseline = 0, [], 0.0

    def check(results) -> None:
        nonlocal seen
        for r in results:                   # indices run on across switches: one stream
            assert r.index == seen and r.mask.shape == frames[r.index % 3].shape[:2]
            seen += 1

    for i in range(FRAMES):
        if i % SWITCH_EVERY == 0:
            check(seg.set_expression(TEXTS[(i // SWITCH_EVERY) % len(TEXTS)]))
            switch_calls.append(len(e.clip.gates))
        check(seg.push(frames[i % 3]))
        if i == 1_000:
            gc.collect()
            baseline = resident_mb()
    check(seg.flush())
    gc.collect()
    growth = resident_mb() - baseline
    assert seen == FRAMES and seg.timings.frames == FRAMES
    assert growth < 50, f"resident memory grew {growth:.1f} MB"
    assert e.text.calls == len(TEXTS)                           # the LRU serves the repeats
    for k, start in enumerate(switch_calls):
        assert e.clip.gates[start] == (0.0, True), f"switch {k}: history not cleared"
        end = switch_calls[k + 1] if k + 1 < len(switch_calls) else len(e.clip.gates)
        assert all(g == 1.0 for g, _ in e.clip.gates[start + 1:end])
