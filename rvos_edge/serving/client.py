"""`RemoteSegmenter`: a `Segmenter` whose model runs in `rvos-edge serve`, over gRPC (tritonclient).

    seg = RemoteSegmenter("127.0.0.1:8001", stream_id="camera-3")
    seg.set_expression("the red cup on the left")
    for frame in camera:                        # H x W x 3 uint8 BGR
        for r in seg.push(frame): r.index, r.mask, r.score
    for r in seg.flush(): ...
    seg.close()                                 # the server forgets the stream (or let it idle out)

The results are the local Segmenter's for the same frames, mask for mask (the server runs
one Segmenter per stream, rvos_edge.serving.streams). `push_many(frames)` sends several
frames in one call (fewer round trips). Each method is one call of the wire protocol
(rvos_edge.serving.protocol); the server's refusals raise `RemoteError` (a UserError: one
line), a server that cannot be reached a UserError naming the URL. The server's warnings on
an expression (ExpressionTruncatedWarning, UnknownWordsWarning) are warned here as the
local Segmenter warns them.

`timings.engine_s` is the time of the round trips (the server's engine, the network and
the coding of the tensors), `timings.frames` the frames sent; `clip_len` and `model` are
the server's, known after the first `set_expression`.
"""
from __future__ import annotations

import time
import uuid
import warnings
from typing import Any, Iterable

import numpy as np

from rvos_edge.errors import UserError
from rvos_edge.extras import require
from rvos_edge.runtime import segmenter as local
from rvos_edge.runtime.pipeline import StageTimes, check_frame
from rvos_edge.runtime.segmenter import SegmentResult
from rvos_edge.serving.protocol import MODEL_NAME, NO_FRAMES, OUTPUTS, Call, Reply, decode_reply, encode_call

DEFAULT_TIMEOUT_S = 60.0
_WARNINGS = {c.__name__: c for c in (local.ExpressionTruncatedWarning, local.UnknownWordsWarning)}


class RemoteError(UserError):
    """The server refused a call (the message is its one line)."""


def parse_url(url: str) -> str:
    """"host:port" of a gRPC URL (grpc://host:port or host:port); a UserError for another scheme."""
    if "://" in url:
        scheme, _, rest = url.partition("://")
        if scheme != "grpc":
            raise UserError(f"the server URL must be grpc://HOST:PORT or HOST:PORT (rvos-edge serve speaks gRPC), "
                            f"got {url!r}")
        url = rest
    host, _, port = url.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"the server URL must be grpc://HOST:PORT or HOST:PORT, got {url!r}")
    return f"{host}:{port}"


class RemoteSegmenter:
    """One stream of `rvos-edge serve` at `url` (see the module docstring).

    stream_id: the stream's name on the server (default: a random one); two clients with one
    id share one stream. timeout_s: seconds one call may take.
    """

    def __init__(self, url: str, stream_id: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        require("serve", "RemoteSegmenter", modules=("tritonclient",))
        import tritonclient.grpc as grpcclient

        self.url = parse_url(url)
        self.stream_id = stream_id if stream_id is not None else uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.timings = StageTimes()
        self.model: dict[str, Any] | None = None
        self.last_status: dict[str, Any] = {}
        self._expression: str | None = None
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(self.url)

    @property
    def clip_len(self) -> int | None:
        """The server's frames per clip (None before the first set_expression)."""
        return None if self.model is None else int(self.model["clip_len"])

    def describe(self) -> dict[str, Any]:
        """The server's model (artifacts, backend, precision, clip_len) and its URL, for `rvos-edge run`'s summary."""
        return {**(self.model or {}), "server": f"grpc://{self.url}"}

    @property
    def expression(self) -> str | None:
        return self._expression

    @property
    def pending(self) -> int:
        """Frames the server holds for this stream's next clip (as of the last call)."""
        return int(self.last_status.get("pending", 0))

    def set_expression(self, text: str) -> list[SegmentResult]:
        """As Segmenter.set_expression; opens the stream on the server if it is new."""
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"the expression is empty: give a sentence describing the object, got {text!r}")
        reply = self._call("set_expression", text)
        self.model = reply.status["model"]
        for category, message in reply.status.get("warnings", []):
            warnings.warn(message, _WARNINGS.get(category, UserWarning), stacklevel=2)
        self._expression = text
        return reply.results

    def push(self, frame: np.ndarray) -> list[SegmentResult]:
        """As Segmenter.push: one H x W x 3 uint8 BGR frame; the results of the clip it completes."""
        return self.push_many([frame])

    def push_many(self, frames: Iterable[np.ndarray]) -> list[SegmentResult]:
        """Push several frames (one call per run of frames of one size); the results of the clips they complete."""
        results: list[SegmentResult] = []
        run: list[np.ndarray] = []
        for frame in frames:
            check_frame(frame)
            if run and frame.shape != run[0].shape:
                results += self._push(run)
                run = []
            run.append(frame)
        if run:
            results += self._push(run)
        return results

    def flush(self) -> list[SegmentResult]:
        """As Segmenter.flush: the pending frames run as a padded clip."""
        return self._call("flush").results

    def reset(self) -> None:
        """As Segmenter.reset: pending frames dropped, history cleared, index back to 0."""
        self._call("reset")

    def close(self) -> None:
        """Forget the stream on the server (a later call needs set_expression again) and close the channel."""
        try:
            self._call("close")
        finally:
            self._client.close()

    def __enter__(self) -> "RemoteSegmenter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close; when the block raised, a failure to reach the server does not hide its exception."""
        try:
            self.close()
        except UserError:
            if exc_type is None:
                raise

    def _push(self, frames: list[np.ndarray]) -> list[SegmentResult]:
        reply = self._call("push", frames=np.stack(frames))
        self.timings.frames += len(frames)
        return reply.results

    def _call(self, op: str, expression: str = "", frames: np.ndarray = NO_FRAMES) -> Reply:
        """One call; its reply, or RemoteError with the server's line, or UserError when unreachable."""
        from tritonclient.utils import InferenceServerException

        g = self._grpc
        inputs = []
        for name, array in encode_call(Call(self.stream_id, op, expression, frames)).items():
            inputs.append(g.InferInput(name, list(array.shape), "BYTES" if array.dtype.kind == "S" else "UINT8"))
            inputs[-1].set_data_from_numpy(array)
        t0 = time.perf_counter()
        try:
            result = self._client.infer(MODEL_NAME, inputs, outputs=[g.InferRequestedOutput(n) for n in OUTPUTS],
                                        client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise UserError(f"server {self.url}: {op} failed: {str(e.message()).splitlines()[0]}") from None
        finally:
            self.timings.engine_s += time.perf_counter() - t0
        reply = decode_reply({n: result.as_numpy(n) for n in OUTPUTS})
        self.last_status = reply.status
        if reply.error is not None:
            raise RemoteError(f"server {self.url}: {op} refused: {reply.error}")
        self.timings.clips += int(reply.status.get("clips", 0))
        return reply
