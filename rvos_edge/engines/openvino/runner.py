"""OpenVINO backend: an artifact folder -> two graphs compiled for OpenVINO's CPU plugin.

`open_openvino` checks the folder's manifest (format, sha256 of every file, tokenizer),
picks the graphs of the requested precision (`Manifest.graph_files`: bf16 runs the FP32
graphs) and compiles each with:

- INFERENCE_PRECISION_HINT: bf16 for --precision bf16 (refused in one line where
  OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU lack BF16), f32 otherwise, so fp32
  matches ONNX Runtime and the Q/DQ graphs of int8 keep their float parts in FP32
  (OpenVINO's own default on a BF16 CPU would be bf16);
- PERFORMANCE_HINT: "latency" (one stream, the streaming case) or "throughput" (several
  streams: it pays for batches or several requests in flight, not for one clip at a time);
- INFERENCE_NUM_THREADS: `threads` (None: OpenVINO's default, every core);
- CACHE_DIR: ``DIR/openvino_cache/<graph file>-<sha256 prefix>-<precision hint>-<hint>/``
  when the folder is writable, so a second open loads the compiled model instead of
  compiling it. A re-exported graph gets a new folder, and so does each inference
  precision: OpenVINO 2026.4's cache key leaves INFERENCE_PRECISION_HINT out, so a bf16
  open would load an f32 blob compiled into the same folder (and run it as NaN).

Every open, check and capability query goes through one ov.Core per process (`shared_core`),
never a Core of its own: see `shared_core` for the segmentation fault that several Cores caused.

openvino (the [openvino] extra) is imported when a folder is opened, so importing this
module needs neither openvino nor torch; without openvino, opening is one line naming the extra.
"""
from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, TensorSpec, load_manifest
from rvos_edge.engines.base import Engines, Runner
from rvos_edge.errors import UserError
from rvos_edge.extras import require

if TYPE_CHECKING:
    import openvino as ov

CACHE_FOLDER = "openvino_cache"
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}       # `hint` -> PERFORMANCE_HINT
DEVICES = {"cpu": "CPU"}                                          # rvos-edge device -> OpenVINO device
_INFERENCE_PRECISION = {"bf16": "bf16"}                           # every other precision: f32


def _spec(port: ov.Output) -> TensorSpec:
    """A compiled model's input/output as a TensorSpec; dynamic dims become "?"."""
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()).name, shape)


class OpenVinoRunner(Runner):
    """One graph compiled by OpenVINO, run synchronously by one InferRequest (so one thread at a time)."""

    timing = "perf_counter around InferRequest.infer (numpy in and out, outputs copied)"

    def __init__(self, compiled: ov.CompiledModel, name: str) -> None:
        self.compiled = compiled
        self.name = name
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)
        self._request = compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(self.cast_feeds(feeds))       # copies the outputs (share_outputs=False)
        return {t.name: results[port] for t, port in zip(self.outputs, self.compiled.outputs)}


def import_openvino() -> ModuleType:
    """The openvino module; without it, a UserError naming the [openvino] extra."""
    require("openvino", "the openvino backend")
    return importlib.import_module("openvino")


@functools.cache
def shared_core() -> ov.Core:
    """The process's one ov.Core, made on first use and kept until the process exits.

    One Core, not one per open: OpenVINO's CPU plugin (2026.4.1; gdb: sigaltstack called under
    create_plugin_engine) installs, when a Core first loads it, a 20144-byte sigaltstack
    (AT_MINSIGSTKSZ + SIGSTKSZ) on the calling thread, remembering the thread's previous one;
    destroying that plugin puts the previous one back only if its own is still current, and
    unmaps its own. Two Cores
    destroyed in the order they were made therefore leave the thread on the first Core's
    unmapped stack. The next signal with an SA_ONSTACK handler (every Python handler, e.g. the
    SIGCHLD one torch's DataLoader installs for good once it has had workers) then cannot be
    delivered: the kernel's force_sigsegv, si_code SI_KERNEL, handler reset, so no faulthandler
    traceback. Measured (numpy 1.26 and OpenVINO 2026.4.1, AMX CPU, kernel 6.18): the suite with
    the openvino extra died this way in tests/test_openvino.py, its main thread waiting in
    subprocess.run for a child after tests/test_gpu_check.py had trained with a DataLoader
    worker (the core: SIGSEGV, si_code 128, in clock_nanosleep; the main thread's altstack had
    gone from faulthandler's 59760 bytes to a 20144-byte one). Two Cores deleted first-made-first
    and then one SIGCHLD with a handler reproduce it alone, under numpy 2.4.6 as under 1.26.4
    (on a run where the kernel hands the SIGCHLD to the main thread, not another one; numpy's
    version plays no part); deleted last-made-first they do not. test_a_signal_after_engines_are_closed_is_delivered exits
    -11 with a Core per open and passes with this one. With one Core for the process the plugin
    is made once and outlives every compiled model, so no stack is left dangling (it also skips
    reloading the plugin, 8-85 ms, on every open).
    """
    return import_openvino().Core()


def cpu_capabilities(core: ov.Core) -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU, e.g. ("FP32", "BF16", "INT8", ...)."""
    return tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_bf16(core: ov.Core) -> None:
    """A UserError naming the CPU and its capabilities unless OpenVINO can run BF16 on it."""
    capabilities = cpu_capabilities(core)
    if "BF16" not in capabilities:
        raise UserError(f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no BF16 (OpenVINO's CPU "
                        f"capabilities: {', '.join(capabilities)}): use --precision fp32 or int8")


def compile_config(precision: str, threads: int | None, hint: str) -> dict[str, str]:
    """The compile_model properties of `precision`, `threads` and `hint` (see the module docstring)."""
    if hint not in HINTS:
        raise UserError(f"unknown OpenVINO hint {hint!r} (choose from {', '.join(HINTS)})")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    config = {"INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION.get(precision, "f32"), "PERFORMANCE_HINT": HINTS[hint]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _compile(core: ov.Core, path: Path, file: str, sha256: str, config: dict[str, str],
             device: str, cache: bool) -> ov.CompiledModel:
    """`path/file` compiled on `device`, through its cache folder when `cache`; a failure is a UserError."""
    if cache:
        key = f"{file}-{sha256[:16]}-{config['INFERENCE_PRECISION_HINT']}-{config['PERFORMANCE_HINT'].lower()}"
        config = {**config, "CACHE_DIR": str(path / CACHE_FOLDER / key)}
    try:
        return core.compile_model(str(path / file), device, config)
    except RuntimeError as e:                      # OpenVINO's errors are RuntimeErrors with a multi-line trace
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"OpenVINO cannot compile {path / file}: {first}") from None


def open_openvino(path: str | Path, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                  hint: str = "latency", cache: bool = True) -> Engines:
    """Open an artifact folder's graphs of `precision` in OpenVINO (see the module docstring).

    device: "cpu"; threads: INFERENCE_NUM_THREADS (None: every core); hint: "latency" or
    "throughput" (PERFORMANCE_HINT); cache: keep compiled models in DIR/openvino_cache/
    (only where the folder is writable).
    """
    path = Path(path)
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise UserError(f"the openvino backend runs on {' or '.join(DEVICES)}, not {device!r}")
    config = compile_config(precision, threads, hint)
    core = shared_core()
    manifest = load_manifest(path)
    files = manifest.graph_files(precision)
    if config["INFERENCE_PRECISION_HINT"] == "bf16":
        check_bf16(core)
    cache = cache and os.access(path, os.W_OK)
    text, clip = (OpenVinoRunner(_compile(core, path, files[g], manifest.files[files[g]], config,
                                          DEVICES[kind], cache), g) for g in (TEXT_ENCODER, CLIP_MODEL))
    return Engines(text=text, clip=clip, config=manifest.config, precision=precision, clip_len=manifest.clip_len,
                   backend="openvino", source=str(path), learnt_tokens=manifest.learnt_tokens)
