"""The server's streams: one `Segmenter` per stream id over shared engines, and the clips of
different streams batched into one engine call.

`StreamTable.handle(calls)` answers the calls that arrived together (Triton's dynamic
batcher hands them over as one list) in the order of the protocol (rvos_edge.serving.protocol):

1. Streams without a call for `idle_timeout_s` are evicted first.
2. Each call is checked on its own (op, stream id, frames' size and bytes); a bad one gets
   its error reply and changes nothing.
3. The calls of each stream run in their order; the calls of different streams run in
   rounds: a push adds its frames to its stream's Segmenter (`Segmenter.add`) until a clip
   is full, then every stream with a full clip (or a flush's padded one) runs in one engine
   call of batch B <= max_batch (the clip graph's batch dim is dynamic; the streams'
   expressions, histories and has_history go along the batch axis), and each stream takes
   its outputs back (`Segmenter.take_outputs`). A push of 2 clips takes two rounds, the
   second clip seeing the first's history, as on a local Segmenter.

Every stream's masks are therefore those of a local Segmenter fed the same frames (one
graph call with B rows computes each row as a call with one row does, on ONNX Runtime's
CPU kernels bit for bit; tests/test_serve_streams.py checks it).
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rvos_edge.engines import Engines
from rvos_edge.errors import UserError
from rvos_edge.runtime.segmenter import Segmenter, SegmentResult
from rvos_edge.serving.protocol import MAX_STREAM_ID_BYTES, OPS, Call, Limits, Reply, error_reply


@dataclass
class _Stream:
    """A stream held by the server: its Segmenter, when it was last called, its pending frames' size."""

    seg: Segmenter
    last_seen: float
    size: tuple[int, int] | None = None


@dataclass
class _Job:
    """A call in progress: how many of its frames were added, its results so far, the largest batch it ran in."""

    slot: int
    call: Call
    added: int = 0
    results: list[SegmentResult] = field(default_factory=list)
    batch: int = 0
    clips: int = 0
    started: bool = False
    warnings: list[list[str]] = field(default_factory=list)
    failed: str | None = None


@dataclass
class TableStats:
    """Counters since start: calls, refused calls, engine calls and the clips they ran, evictions."""

    calls: int = 0
    errors: int = 0
    engine_calls: int = 0
    clips: int = 0
    max_batch: int = 0
    evicted: int = 0


class StreamTable:
    """The streams of one server over `engines` (see the module docstring).

    clip_len: frames per clip (None: the model's default, as Segmenter). clock: seconds, monotonic.
    """

    def __init__(self, engines: Engines, limits: Limits, clip_len: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engines = engines
        self.limits = limits
        self.clip_len = engines.resolve_clip_len(clip_len)
        self.clock = clock
        self.stats = TableStats()
        self._streams: dict[str, _Stream] = {}

    @property
    def model(self) -> dict[str, object]:
        """What the server runs, as status "model" reports it."""
        e = self.engines
        return {"artifacts": e.source, "backend": e.backend, "precision": e.precision, "clip_len": self.clip_len}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def handle(self, calls: list[Call | Reply]) -> list[Reply]:
        """One reply per call, in order (a Reply among `calls`, a request that did not decode, is kept)."""
        now = self.clock()
        self._evict(now)
        replies: list[Reply | None] = [None] * len(calls)
        queues: dict[str, deque[_Job]] = {}
        for slot, call in enumerate(calls):
            self.stats.calls += 1
            error = call.error if isinstance(call, Reply) else self._check(call)
            if error is not None:
                replies[slot] = error_reply(error)
                continue
            queues.setdefault(call.stream_id, deque()).append(_Job(slot, call))
        while queues:
            full: list[tuple[_Stream, _Job]] = []
            for sid in list(queues):
                queue = queues[sid]
                while queue:
                    job = queue[0]
                    try:
                        if job.failed is not None:
                            raise UserError(job.failed)
                        stream = self._advance(job, now)
                    except UserError as e:
                        replies[job.slot] = error_reply(str(e))
                        queue.popleft()
                        continue
                    if stream is not None:
                        full.append((stream, job))
                        break
                    replies[job.slot] = self._done(job)
                    queue.popleft()
                if not queue:
                    del queues[sid]
            self._run_clips(full)
        done = [r for r in replies if r is not None]
        assert len(done) == len(calls), "every call gets its reply"
        self.stats.errors += sum(1 for r in done if r.error is not None)
        return done

    def _evict(self, now: float) -> None:
        stale = [sid for sid, s in self._streams.items() if now - s.last_seen > self.limits.idle_timeout_s]
        for sid in stale:
            del self._streams[sid]
        self.stats.evicted += len(stale)

    def _check(self, call: Call) -> str | None:
        """Why `call` is refused whatever the streams hold, or None."""
        if call.op not in OPS:
            return f"unknown op {call.op!r}: expected one of {', '.join(OPS)}"
        if not call.stream_id or len(call.stream_id.encode()) > MAX_STREAM_ID_BYTES:
            return f"a stream id is 1..{MAX_STREAM_ID_BYTES} bytes of UTF-8, got {len(call.stream_id.encode())} bytes"
        frames = call.frames
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            return f"frames must be uint8 [N, H, W, 3] (BGR), got {frames.dtype} {list(frames.shape)}"
        if frames.nbytes > self.limits.max_request_bytes:
            return (f"the call's frames are {frames.nbytes / 2**20:.1f} MiB, the server takes at most "
                    f"{self.limits.max_request_mb:g} MiB per call (--max-request-mb): send fewer or smaller frames")
        n = frames.shape[0]
        if call.op == "push" and (n == 0 or frames.shape[1] == 0 or frames.shape[2] == 0):
            return f"push needs N >= 1 frames of H, W >= 1, got frames {list(frames.shape)}"
        if call.op != "push" and n:
            return f"{call.op} takes no frames, got {n}"
        return None

    def _stream(self, sid: str) -> _Stream:
        stream = self._streams.get(sid)
        if stream is None:
            raise UserError(f"unknown stream {sid!r} (never opened, closed, or evicted after "
                            f"{self.limits.idle_timeout_s:g} s idle): call set_expression first")
        return stream

    def _advance(self, job: _Job, now: float) -> _Stream | None:
        """Run `job` as far as it goes without the engine: its stream when it waits for a clip, None when done."""
        call, first = job.call, not job.started
        job.started = True
        if call.op == "set_expression":
            self._set_expression(job, now)
            return None
        stream = self._stream(call.stream_id)
        stream.last_seen = now
        if call.op == "reset":
            stream.seg.reset()
            stream.size = None
        elif call.op == "close":
            del self._streams[call.stream_id]
        elif call.op == "flush":
            if first and stream.seg.pending:
                return stream
            stream.size = None
        else:
            size = tuple(call.frames.shape[1:3])
            if first and stream.size is not None and stream.size != size:
                raise UserError(f"stream {call.stream_id!r} has {stream.seg.pending} frame(s) of "
                                f"{stream.size[0]}x{stream.size[1]} waiting for a clip, this push's are "
                                f"{size[0]}x{size[1]}: flush first to change size")
            stream.size = size
            while job.added < len(call.frames):
                job.added += 1
                if stream.seg.add(call.frames[job.added - 1]):
                    return stream
            if not stream.seg.pending:
                stream.size = None
        return None

    def _set_expression(self, job: _Job, now: float) -> None:
        sid = job.call.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                raise UserError(f"the server holds its maximum of {self.limits.max_streams} streams "
                                "(--max-streams): close one or wait for an idle one to be evicted")
            stream = _Stream(Segmenter(self.engines, self.clip_len), now)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job.results = stream.seg.set_expression(job.call.expression)
        self._streams[sid] = stream
        stream.last_seen, stream.size = now, None
        job.batch = job.clips = 1 if job.results else 0
        job.warnings = [[w.category.__name__, str(w.message)] for w in caught]

    def _done(self, job: _Job) -> Reply:
        stream = self._streams.get(job.call.stream_id)
        status: dict[str, object] = {"ok": True, "pending": stream.seg.pending if stream else 0,
                                     "clips": job.clips, "batch": job.batch, "streams": len(self._streams)}
        if job.call.op == "set_expression":
            status.update(model=self.model, warnings=job.warnings)
        return Reply(job.results, status)

    def _run_clips(self, full: list[tuple[_Stream, _Job]]) -> None:
        """Run the full clips of `full` (one per stream) in engine calls of at most max_batch streams."""
        step = self.limits.max_batch
        for start in range(0, len(full), step):
            group = full[start:start + step]
            feeds = [stream.seg.clip_inputs() for stream, _ in group]
            batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
            t0 = time.perf_counter()
            try:
                out = self.engines.clip.run(batch)
            except Exception as e:       # the engine's failure fails these calls only; their streams restart
                for stream, job in group:
                    stream.seg.reset()
                    stream.size = None
                    job.failed = (f"the engine failed on this stream's clip ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); the stream was reset")
                continue
            seconds = time.perf_counter() - t0
            self.stats.engine_calls += 1
            self.stats.clips += len(group)
            self.stats.max_batch = max(self.stats.max_batch, len(group))
            logits, history = out["mask_logits"], out["history_out"]
            for i, (stream, job) in enumerate(group):
                stream.seg.timings.engine_s += seconds / len(group)
                job.results += stream.seg.take_outputs(logits[i:i + 1], history[i:i + 1])
                job.batch = max(job.batch, len(group))
                job.clips += 1
