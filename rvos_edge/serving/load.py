"""A bounded load on `rvos-edge serve`: S streams pushing their videos at once, and the check that
every frame came back once, to its own stream, with the local Segmenter's mask.

    runs, wall_s = drive("127.0.0.1:8001", videos, expressions, frames_per_call=3)
    report = check(runs, expected)          # expected[s]: the local Segmenter's results of video s

`server_process` starts `rvos-edge serve` in a child process on a free loopback port and
stops it (SIGINT, then SIGKILL after a grace period) when the block ends, whatever happens;
its output lines are kept (the last one says what it served).

`drive` opens one RemoteSegmenter per video (stream ids "load-0", "load-1", ...), one thread
each; they start together (a barrier) and push `frames_per_call` frames per call, then flush
and close. The latency of a call that ran clips is recorded (with frames_per_call = the clip
length, each such call is one clip: its latency is the clip's round trip).
"""
from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvos_edge.errors import UserError
from rvos_edge.runtime.segmenter import SegmentResult
from rvos_edge.serving.client import RemoteSegmenter

READY = "rvos-edge serve: "


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A `rvos-edge serve` child: its URL and the lines it printed (stdout and stderr, in order)."""

    url: str
    process: subprocess.Popen
    lines: list[str]


@contextlib.contextmanager
def server_process(path: str | Path, *flags: str, ready_timeout_s: float = 120.0,
                   stop_timeout_s: float = 75.0) -> Iterator[ServerProcess]:
    """`rvos-edge serve path --port P *flags` on a free port P of 127.0.0.1, once it serves.

    On exit it sends Ctrl-C and waits `stop_timeout_s` before killing it. PyTriton's own stop waits
    up to 30 s for tritonserver before killing it, so the wait here is longer than that: a
    tritonserver slow to exit then still ends in the serve command's "stopped" line."""
    port = free_port()
    cmd = [sys.executable, "-m", "rvos_edge.cli", "serve", str(path), "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    arrived: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            arrived.put(line)
        arrived.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                line = arrived.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise UserError(f"rvos-edge serve did not start in {ready_timeout_s:g} s: {lines[-5:]}") from None
            if line is None:
                raise UserError(f"rvos-edge serve exited with {proc.wait()}: {lines[-5:]}")
            if line.startswith(READY) and "Ctrl-C stops" in line:
                break
        yield ServerProcess(f"127.0.0.1:{port}", proc, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(10.0)                   # every line the child printed is in `lines`


@dataclass
class StreamRun:
    """What one stream got back: its results in order of arrival, the latency of each call that ran clips."""

    stream_id: str
    results: list[SegmentResult] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class LoadCheck:
    """Frames expected, and those lost (never returned), duplicated (returned twice) and misrouted
    (returned with another mask or score than the local Segmenter's for that stream and index)."""

    frames: int
    lost: int
    duplicated: int
    misrouted: int

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.misrouted == 0


def drive(url: str, videos: list[np.ndarray], expressions: list[str], frames_per_call: int,
          timeout_s: float = 120.0) -> tuple[list[StreamRun], float]:
    """Push videos[s] (uint8 [T, H, W, 3] BGR) on stream s with expressions[s], all streams at once;
    the streams' runs and the wall seconds from the start to the last stream's end."""
    runs = [StreamRun(f"load-{s}") for s in range(len(videos))]
    start = threading.Barrier(len(videos) + 1)

    def stream(s: int) -> None:
        run = runs[s]
        try:
            with RemoteSegmenter(url, run.stream_id, timeout_s=timeout_s) as seg:
                seg.set_expression(expressions[s])
                start.wait()
                video = videos[s]
                for k in range(0, len(video), frames_per_call):
                    t0 = time.perf_counter()
                    got = seg.push_many(video[k:k + frames_per_call])
                    if got:
                        run.latencies_s.append(time.perf_counter() - t0)
                        run.batches.append(int(seg.last_status["batch"]))
                    run.results += got
                run.results += seg.flush()
        except Exception as e:           # reported with the run; the check counts its frames as lost
            run.error = f"{type(e).__name__}: {e}"
            start.abort()

    threads = [threading.Thread(target=stream, args=(s,), daemon=True) for s in range(len(videos))]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return runs, time.perf_counter() - t0


def check(runs: list[StreamRun], expected: list[list[SegmentResult]]) -> LoadCheck:
    """Count lost, duplicated and misrouted frames of `runs` against the local results `expected`."""
    frames = lost = duplicated = misrouted = 0
    for run, want in zip(runs, expected):
        frames += len(want)
        by_index = {r.index: r for r in want}
        seen: set[int] = set()
        for r in run.results:
            if r.index in seen:
                duplicated += 1
                continue
            seen.add(r.index)
            w = by_index.get(r.index)
            if w is None or w.score != r.score or not np.array_equal(w.mask, r.mask):
                misrouted += 1
        lost += len(set(by_index) - seen)
    return LoadCheck(frames, lost, duplicated, misrouted)
