"""`rvos-edge serve DIR`: a Triton server here, no container, holding one Segmenter history per stream.

NVIDIA's PyTriton (``pip install 'rvos-edge[serve]'``) runs a real Triton Inference Server
with its Python backend; the backend hands each batch of requests to `StreamTable.handle`
(rvos_edge.serving.streams) through PyTriton's proxy. The one model is "rvos", its wire
protocol is rvos_edge.serving.protocol's (docs/serving.md). Triton's dynamic batcher gives
the model the calls that arrived within `queue_delay_ms` of each other (up to `max_batch`,
those whose tensors have the same shapes: the frames of one size), and the table runs their
full clips in one engine call.

Only gRPC is served, on `host:port` (127.0.0.1 unless the caller names another host);
HTTP and metrics are off, so nothing else listens. Two things of this machine's Python are
set up here, not in the user's shell: PyTriton 0.7 needs numpy 1.x (the extra pins it; with
numpy 2 its responses arrive empty), and Triton's Python stub, a child process, must load
this interpreter's libpython: its folder (sysconfig LIBDIR) goes first on the child's
LD_LIBRARY_PATH (a pyenv Python otherwise gets the system's libpython and fails to start).
"""
from __future__ import annotations

import os
import socket
import sys
import sysconfig
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvos_edge.engines import open_engines
from rvos_edge.errors import UserError
from rvos_edge.extras import require
from rvos_edge.serving.protocol import INPUTS, MODEL_NAME, Limits, decode_call, encode_reply
from rvos_edge.serving.streams import StreamTable

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8001
EXIT_TIMEOUT_S = 5               # Triton's wait for in-flight requests at stop


@dataclass(frozen=True)
class ServeOptions:
    """Where `rvos-edge serve` listens and what it runs (flags of the same names)."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    backend: str | None = None
    precision: str = "fp32"
    clip_len: int | None = None
    device: str | None = None
    threads: int | None = None
    log: str | None = None
    limits: Limits = Limits()


def check_options(options: ServeOptions) -> None:
    """A UserError for a limit or port out of range."""
    lim = options.limits
    for name, value, low in (("--max-streams", lim.max_streams, 1), ("--max-batch", lim.max_batch, 1),
                             ("--port", options.port, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if options.port > 65535:
        raise UserError(f"--port must be <= 65535, got {options.port}")
    for name, amount in (("--idle-timeout", lim.idle_timeout_s), ("--max-request-mb", lim.max_request_mb)):
        if not amount > 0:
            raise UserError(f"{name} must be > 0, got {amount:g}")
    if lim.queue_delay_ms < 0:
        raise UserError(f"--queue-delay must be >= 0, got {lim.queue_delay_ms:g}")


def prepare_python() -> None:
    """numpy 1.x checked, and this interpreter's libpython folder put first on LD_LIBRARY_PATH for
    Triton's Python stub (inherited by the server's child processes)."""
    require("serve", "rvos-edge serve")
    if int(np.__version__.split(".")[0]) >= 2:
        raise UserError(f"PyTriton needs numpy 1.x, numpy {np.__version__} is installed: "
                        "pip install 'rvos-edge[serve]' (it pins numpy<2)")
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _infer(table: StreamTable, lock: threading.Lock):
    """PyTriton's inference callable: a list of requests (dicts of arrays) -> one output dict each."""
    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        calls = [decode_call({name: request[name] for name in INPUTS if name in request}) for request in requests]
        with lock:
            replies = table.handle(calls)
        return [encode_reply(r) for r in replies]
    return infer


class Server:
    """A running server: `start()` returns once Triton serves the model, `stop()` ends it."""

    def __init__(self, path: str | Path, options: ServeOptions) -> None:
        check_options(options)
        prepare_python()
        _check_port_free(options.host, options.port)
        self.options = options
        engines = open_engines(path, options.backend, options.precision, device=options.device,
                               threads=options.threads)
        self.table = StreamTable(engines, options.limits, options.clip_len)
        self._lock = threading.Lock()
        self._triton: Any = None

    @property
    def url(self) -> str:
        host = self.options.host
        return f"[{host}]:{self.options.port}" if ":" in host else f"{host}:{self.options.port}"

    def start(self) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        # PyTriton's own client warns that tritonclient.grpc ignores its network timeout: noise for a user
        warnings.filterwarnings("ignore", message=".*doesn't support timeout", module="pytriton")
        o, lim = self.options, self.options.limits
        config = TritonConfig(grpc_address=o.host, grpc_port=o.port, allow_http=False, allow_metrics=False,
                              allow_gpu_metrics=False, allow_cpu_metrics=False, exit_timeout_secs=EXIT_TIMEOUT_S,
                              log_file=Path(o.log).resolve() if o.log else Path(os.devnull))
        triton = Triton(config=config)
        try:
            triton.bind(
                model_name=MODEL_NAME, infer_func=_infer(self.table, self._lock),
                inputs=[Tensor(name="stream_id", dtype=np.bytes_, shape=(1,)),
                        Tensor(name="op", dtype=np.bytes_, shape=(1,)),
                        Tensor(name="expression", dtype=np.bytes_, shape=(1,), optional=True),
                        Tensor(name="frames", dtype=np.uint8, shape=(-1, -1, -1, 3), optional=True)],
                outputs=[Tensor(name="index", dtype=np.int64, shape=(-1,)),
                         Tensor(name="masks", dtype=np.bool_, shape=(-1, -1, -1)),
                         Tensor(name="scores", dtype=np.float64, shape=(-1,)),
                         Tensor(name="status", dtype=np.bytes_, shape=(1,))],
                config=ModelConfig(max_batch_size=lim.max_batch, batcher=DynamicBatcher(
                    max_queue_delay_microseconds=int(lim.queue_delay_ms * 1000))),
                strict=True)
            triton.run()
        except Exception as e:          # PyTriton's start-up failures: one line, the log has the rest
            triton.stop()
            raise UserError(f"the Triton server did not start on {self.url}: {str(e).splitlines()[0]}"
                            + (f" (see {o.log})" if o.log else " (rerun with --log FILE for Triton's log)")) from None
        self._triton = triton

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None


def serve_command(path: str, options: ServeOptions) -> int:
    """`rvos-edge serve`: serve until Ctrl-C or SIGTERM (exit 0), or until Triton dies (a UserError)."""
    server = Server(path, options)
    server.start()
    t, lim = server.table, options.limits
    print(f"rvos-edge serve: {t.engines.source} ({t.engines.backend} {t.engines.precision}, clip {t.clip_len}) "
          f"as model {MODEL_NAME!r} on grpc {server.url}; max {lim.max_streams} streams, idle timeout "
          f"{lim.idle_timeout_s:g} s, {lim.max_request_mb:g} MiB per call; Ctrl-C stops", flush=True)
    stopped = threading.Event()
    try:
        while server.alive():
            stopped.wait(1.0)
        raise UserError("the Triton server stopped by itself" + (f": see {options.log}" if options.log else
                                                                  " (rerun with --log FILE for Triton's log)"))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    s = t.stats
    print(f"rvos-edge serve: stopped; {s.calls} calls ({s.errors} refused), {s.clips} clips in "
          f"{s.engine_calls} engine calls (largest batch {s.max_batch}), {s.evicted} idle streams evicted",
          file=sys.stdout, flush=True)
    return 0
