"""The wire protocol of `rvos-edge serve`: one Triton model, "rvos", that every stream calls.

Each inference request is one call on one stream (Triton's batch dim is 1 in every
tensor below; a request of batch > 1 is refused):

    inputs   stream_id   BYTES [1, 1]            the stream's name, 1..128 bytes of UTF-8, chosen by the client
             op          BYTES [1, 1]            set_expression | push | flush | reset | close
             expression  BYTES [1, 1]            set_expression only: the UTF-8 text
             frames      UINT8 [1, N, H, W, 3]   push only: N >= 1 BGR frames of one size
    outputs  index       INT64 [1, R]            the stream's frame index of each result
             masks       BOOL  [1, R, H', W']    one mask per result, at its frames' own size
             scores      FP64  [1, R]            mean probability inside each mask (as the local score)
             status      BYTES [1, 1]            JSON: {"ok": true, "pending": ..., "batch": ..., ...}
                                                 or {"ok": false, "error": "one line"}

expression and frames are optional inputs, sent only with the ops that take them; index,
masks and scores are left out of a response with no results (R = 0). PyTriton 0.7 cannot
carry a tensor with a zero-sized dim, so neither side ever sends one.

The ops are `Segmenter`'s (rvos_edge.runtime.segmenter) on the stream's own Segmenter:
`set_expression` opens the stream if it is new (its R results are the previous
expression's pending frames, as `Segmenter.set_expression` returns them), `push`
adds N frames and returns the results of every clip they complete, `flush` runs the
pending frames as a padded clip, `reset` restarts the stream (history and index),
`close` forgets it. Every op but `set_expression` on a stream the server does not
hold (never opened, closed, or evicted after the idle timeout) is refused with
"unknown stream"; the client must `set_expression` again, which starts it afresh.

A stream's frames that wait for one clip share one size (the results of one call then
do too): a push whose H x W differs from the pending frames' is refused; after a
flush, reset or set_expression any size goes. An error is an answer (status ok false,
no results), never a failed request, so a bad call never fails the other streams' calls
Triton batched with it; what Triton itself refuses (a wrong dtype or rank of a tensor)
is refused before the model sees it.

status on success: "pending" (frames waiting for the stream's next clip), "clips" (clips
this call ran), "batch"
(the largest number of streams whose clips ran in one engine call with this call's,
0 when it ran none), "streams" (streams open), and on set_expression "model"
({"artifacts", "backend", "precision", "clip_len"}) and "warnings" ([[category, message]],
ExpressionTruncatedWarning or UnknownWordsWarning as the local Segmenter warns).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rvos_edge.runtime.segmenter import SegmentResult

MODEL_NAME = "rvos"
OPS = ("set_expression", "push", "flush", "reset", "close")
INPUTS = ("stream_id", "op", "expression", "frames")
REQUIRED_INPUTS = ("stream_id", "op")
NO_FRAMES = np.zeros((0, 1, 1, 3), np.uint8)
OUTPUTS = ("index", "masks", "scores", "status")
MAX_STREAM_ID_BYTES = 128


@dataclass(frozen=True)
class Limits:
    """What one server accepts; `rvos-edge serve` flags of the same names.

    max_streams: streams held at once (a new stream beyond it is refused).
    idle_timeout_s: a stream without a call for this long is evicted (at the next call to the server).
    max_request_mb: the frames of one call, N x H x W x 3 bytes, in MiB.
    max_batch: clips of different streams run in one engine call at most.
    queue_delay_ms: how long Triton holds a call to batch it with others.
    """

    max_streams: int = 64
    idle_timeout_s: float = 300.0
    max_request_mb: float = 64.0
    max_batch: int = 8
    queue_delay_ms: float = 2.0

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)


@dataclass(frozen=True)
class Call:
    """One request, decoded: frames uint8 [N, H, W, 3] (N = 0 for every op but push)."""

    stream_id: str
    op: str
    expression: str
    frames: np.ndarray


@dataclass(frozen=True)
class Reply:
    """One answer: the results (frames of one size) and the status (see the module docstring)."""

    results: list[SegmentResult]
    status: dict[str, Any]

    @property
    def error(self) -> str | None:
        return None if self.status.get("ok") else str(self.status.get("error"))


def error_reply(message: str) -> Reply:
    return Reply([], {"ok": False, "error": message})


def _bytes(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.bytes_)


def encode_call(call: Call) -> dict[str, np.ndarray]:
    """`call` as the model's input arrays (the batch dim of 1 added; no empty optional input)."""
    arrays = {"stream_id": _bytes(call.stream_id), "op": _bytes(call.op)}
    if call.expression:
        arrays["expression"] = _bytes(call.expression)
    if len(call.frames):
        arrays["frames"] = np.ascontiguousarray(call.frames, np.uint8)[None]
    return arrays


def decode_call(arrays: dict[str, np.ndarray]) -> Call | Reply:
    """The model's input arrays of one request -> a Call, or the error Reply for a malformed one."""
    missing = [n for n in REQUIRED_INPUTS if n not in arrays]
    if missing:
        return error_reply(f"the request lacks input(s) {', '.join(missing)}")
    if any(a.shape[0] != 1 for a in arrays.values()):
        return error_reply("one call per request: every input's batch dim must be 1")
    texts = {"expression": ""}
    for name in ("stream_id", "op", "expression"):
        if name not in arrays:
            continue
        values = arrays[name].reshape(-1)
        if values.size != 1:
            return error_reply(f"input {name} must hold one value, got {values.size}")
        try:
            texts[name] = bytes(values[0]).decode()
        except UnicodeDecodeError:
            return error_reply(f"input {name} is not UTF-8")
    frames = arrays["frames"][0] if "frames" in arrays else NO_FRAMES
    return Call(texts["stream_id"], texts["op"], texts["expression"], frames)


def encode_reply(reply: Reply) -> dict[str, np.ndarray]:
    """`reply` as the model's output arrays (the batch dim of 1 added; status alone when R = 0)."""
    arrays = {"status": _bytes(json.dumps(reply.status))}
    results = reply.results
    if results:
        arrays.update(index=np.array([[r.index for r in results]], np.int64),
                      masks=np.stack([r.mask for r in results])[None],
                      scores=np.array([[r.score for r in results]], np.float64))
    return arrays


def decode_reply(arrays: dict[str, np.ndarray | None]) -> Reply:
    """The model's output arrays of one response (None or absent: not sent) -> a Reply."""
    status = json.loads(bytes(arrays["status"].reshape(-1)[0]).decode())
    index, masks, scores = (arrays.get(n) for n in ("index", "masks", "scores"))
    if index is None or masks is None or scores is None:
        return Reply([], status)
    results = [SegmentResult(int(i), m, float(s)) for i, m, s in zip(index[0], masks[0], scores[0])]
    return Reply(results, status)
