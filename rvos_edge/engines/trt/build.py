"""``rvos-edge build DIR --backend trt``: TensorRT engines for an artifact folder, built with Polygraphy's loaders.

    result = build_engines("artifacts/", "fp16", workspace_gb=4, max_batch=2)
    result.entry.files        # {"text_encoder": "text_encoder.fp16.engine", "clip_model": "clip_model.fp16.engine"}

Steps: read the manifest; detect the installed TensorRT and make the build plan
(`rvos_edge.engines.trt.plan`: weakly typed with builder flags on 10.x, strongly
typed from the precision's ONNX on 11, the plugin graph or its decomposed
fallback); select the GPU; register the CubeFrameAttention plugin when the plan
uses it. Each graph is then built by Polygraphy (`polygraphy.backend.trt`):
- the network: ``network_from_onnx_path``, or, when the plan has network creation
  flags (PREFER_AOT_PYTHON_PLUGINS, which Polygraphy's network loaders cannot
  set), `network` creates it with them and parses the ONNX the way Polygraphy does;
- the builder config: `create_config`, a ``CreateConfig`` with the plan's flags
  (fp16, int8; tf32 off where the plan clears TF32), one ``Profile`` (batch
  1..max_batch, the export's clip-length range), the workspace pool limit, the
  timing cache to load and, for INT8 from a calibration cache on TensorRT 10.x,
  `cache_calibrator`: Polygraphy's ``Calibrator`` with no data, reading only the
  cache (its header rewritten for the installed TensorRT, which ignores a cache of
  another version);
- ``engine_bytes_from_network``, which builds and merges the new timings into the
  timing cache file (default ``DIR/tensorrt.timing.cache``, shared by all builds;
  Polygraphy locks it with a ``.lock`` file beside it).
Then, each atomically: the engines (``<graph>[.<precision>].engine``), the build
log (``tensorrt_build.<precision>.log``: the plan, the GPU, the profiles and
Polygraphy's and TensorRT's messages; written also when the build fails) and,
last, the manifest with the engine entry (TensorRT version, GPU name and compute
capability, precision, source ONNX and their sha256). A failure is one line
(a UserError) naming what failed, with TensorRT's last error. Needs tensorrt and
polygraphy, imported when called; no torch unless the plan uses the plugin.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from rvos_edge.artifacts.calib_cache import calibration_cache_for
from rvos_edge.artifacts.manifest import GRAPH_NAMES, hash_files, load_manifest, write_manifest
from rvos_edge.artifacts.tensorrt import EngineEntry, GpuInfo, engine_file, with_engines
from rvos_edge.engines.trt.cuda import device_index, select_device
from rvos_edge.engines.trt.messages import VERBOSE, Messages, captured
from rvos_edge.engines.trt.plan import ArtifactSet, BuildPlan, GraphPlan, Shape, TrtVersion, plan_build, profile_shapes
from rvos_edge.engines.trt.runner import import_tensorrt
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes

DEFAULT_TIMING_CACHE = "tensorrt.timing.cache"
# calibration algorithm of a cache header -> the TensorRT 10.x calibrator class reading it (removed in TensorRT 11)
CALIBRATORS = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "EntropyCalibration": "IInt8EntropyCalibrator",
               "MinMaxCalibration": "IInt8MinMaxCalibrator"}


@dataclass(frozen=True)
class BuildResult:
    """A finished build: its plan, the manifest entry written, the engine sizes and the time taken."""

    plan: BuildPlan
    entry: EngineEntry
    sizes: dict[str, int]
    seconds: float

    def summary(self, folder: str) -> str:
        """The command's one-line summary."""
        files = ", ".join(f"{self.entry.files[g]} ({self.sizes[g] / 2 ** 20:.1f} MiB)" for g in GRAPH_NAMES)
        gpu = GpuInfo(self.entry.gpu, self.entry.compute_capability)
        plugin = f", CubeFrameAttention plugin ({self.plan.plugin})" if self.plan.plugin else ""
        return (f"built {self.plan.precision} TensorRT engines for {folder} with TensorRT "
                f"{self.entry.tensorrt_version} on {gpu} in {self.seconds:.0f} s{plugin}: {files}")


def cache_calibrator(trt: Any, cache: bytes, version: TrtVersion, file: IO[bytes]) -> Any:
    """Polygraphy's Calibrator for TensorRT 10.x that only reads `cache` (a TensorRT calibration cache) with
    its header rewritten for `version`: it has no calibration data (an empty data loader).

    file: an open temporary file to hold the cache while the engine builds (Polygraphy reads a
    cache from a path or a file with a descriptor). The header's algorithm picks the calibrator class.
    """
    from polygraphy.backend.trt import Calibrator

    data, algorithm = calibration_cache_for(cache, str(version))
    if algorithm not in CALIBRATORS:
        raise UserError(f"calibration cache algorithm {algorithm!r} is not supported "
                        f"(supported: {', '.join(CALIBRATORS)})")
    file.write(data)
    file.flush()
    return Calibrator(data_loader=[], cache=file, BaseClass=getattr(trt, CALIBRATORS[algorithm]))


def create_config(trt: Any, plan: BuildPlan, graph: GraphPlan, shapes: dict[str, tuple[Shape, Shape, Shape]],
                  workspace_gb: float | None, timing_cache: Path, calibrator: Any = None) -> Any:
    """Polygraphy's CreateConfig for one graph of `plan`: its builder flags, one profile of `shapes`
    ({input: (min, opt, max)}), the workspace limit (None: TensorRT's default), the timing cache to
    load (when the file exists) and the INT8 calibrator (None without a calibration cache)."""
    from polygraphy.backend.trt import CreateConfig, Profile

    profile = Profile()
    for tensor, (lo, opt, hi) in shapes.items():
        profile.add(tensor, min=lo, opt=opt, max=hi)
    pools = None if workspace_gb is None else {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * 2 ** 30)}
    # TF32 is TensorRT's default: kept unless the plan clears it (Polygraphy clears it unless tf32=True)
    return CreateConfig(tf32="TF32" not in plan.cleared_flags, fp16="FP16" in graph.builder_flags,
                        int8="INT8" in graph.builder_flags, profiles=[profile], calibrator=calibrator,
                        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
                        memory_pool_limits=pools)


def network(trt: Any, path: Path, plan: BuildPlan) -> tuple[Any, Any, Any]:
    """(builder, network, parser) of the ONNX file `path`, parsed, with the plan's network creation flags.

    Polygraphy's network_from_onnx_path takes no creation flag but STRONGLY_TYPED, which the plan never
    sets (TensorRT 11 types every network strongly and ignores it); a plan with flags gets its network
    created here with them, with Polygraphy's TensorRT logger, and parsed as Polygraphy does.
    """
    from polygraphy.backend.trt import get_trt_logger, network_from_onnx_path

    if not plan.network_flags:
        return network_from_onnx_path(str(path))
    logger = get_trt_logger()
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    net = builder.create_network(flags)
    parser = trt.OnnxParser(net, logger)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise UserError(f"TensorRT cannot parse {path.name}: {errors[0] if errors else 'see the build log'}")
    return builder, net, parser


def _build(trt: Any, folder: Path, plan: BuildPlan, name: str, shapes: dict[str, tuple[Shape, Shape, Shape]],
           workspace_gb: float | None, timing_cache: Path, messages: Messages) -> bytes:
    """The serialized engine of graph `name` (the timing cache file updated); failures are UserErrors."""
    from polygraphy.backend.trt import engine_bytes_from_network
    from polygraphy.exception import PolygraphyException

    graph = plan.graphs[name]
    with tempfile.TemporaryFile() as cache_file:
        calibrator = None
        if graph.calibration_cache is not None:
            try:
                cache = (folder / graph.calibration_cache).read_bytes()
            except OSError as e:
                raise UserError(f"cannot read {folder / graph.calibration_cache}: {e.strerror}") from None
            calibrator = cache_calibrator(trt, cache, plan.version, cache_file)
        config = create_config(trt, plan, graph, shapes, workspace_gb, timing_cache, calibrator)
        try:
            parsed = network(trt, folder / graph.onnx, plan)
        except PolygraphyException as e:
            raise UserError(f"TensorRT cannot parse {graph.onnx}: {messages.last_error or str(e).splitlines()[0]}") \
                from None
        try:
            return bytes(engine_bytes_from_network(parsed, config=config, save_timing_cache=str(timing_cache)))
        except PolygraphyException:
            raise UserError(f"TensorRT could not build {name} from {graph.onnx}: "
                            f"{messages.last_error or 'see the build log'}") from None


def _log_text(plan: BuildPlan, gpu: GpuInfo, profiles: dict, lines: list[str]) -> bytes:
    """The build log: the plan, the GPU, the profiles, then Polygraphy's and TensorRT's messages."""
    head = [plan.describe(), f"GPU: {gpu}"]
    head += [f"profile {g} {t}: min {lo} opt {opt} max {hi}"
             for g, shapes in profiles.items() for t, (lo, opt, hi) in shapes.items()]
    return ("\n".join(head + ["", *lines]) + "\n").encode()


def build_engines(folder: str | Path, precision: str = "fp32", workspace_gb: float | None = None,
                  max_batch: int = 1, timing_cache: str | Path | None = None, device: str = "cuda",
                  progress: bool = True) -> BuildResult:
    """Build the TensorRT engines of `precision` for an artifact folder (see the module docstring).

    workspace_gb: TensorRT's workspace pool limit (None: TensorRT's default, the GPU's memory);
    max_batch: largest batch of the profiles; timing_cache: file to load and update
    (default DIR/tensorrt.timing.cache); device: "cuda" or "cuda:N".
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    if workspace_gb is not None and workspace_gb <= 0:
        raise UserError(f"--workspace must be > 0 GB, got {workspace_gb}")
    manifest = load_manifest(folder)
    profiles = profile_shapes(manifest.config, manifest.clip_len, max_batch)
    trt = import_tensorrt()
    artifacts = ArtifactSet.from_manifest(manifest, str(folder))
    blocker = None
    if artifacts.plugin_graph is not None:
        from rvos_edge.engines.trt.plugin import plugin_blocker

        blocker = plugin_blocker()
    plan = plan_build(TrtVersion.parse(trt.__version__), precision, artifacts, blocker)
    gpu = select_device(device_index(device))
    if plan.plugin is not None:
        from rvos_edge.engines.trt.plugin import register_plugin

        register_plugin(aot=plan.plugin == "aot")
    cache_path = Path(timing_cache) if timing_cache is not None else folder / DEFAULT_TIMING_CACHE
    log_name = f"tensorrt_build.{precision}.log"
    engines: dict[str, bytes] = {}
    with captured(VERBOSE) as messages:
        try:
            for graph in tqdm(GRAPH_NAMES, desc=f"trt {precision}", unit="engine", disable=not progress, leave=False):
                engines[graph] = _build(trt, folder, plan, graph, profiles[graph], workspace_gb, cache_path, messages)
        finally:
            atomic_write_bytes(folder / log_name, _log_text(plan, gpu, profiles, messages.lines))
    files = {g: engine_file(g, precision) for g in GRAPH_NAMES}
    for graph, data in engines.items():
        atomic_write_bytes(folder / files[graph], data)
    entry = EngineEntry(
        precision=precision, tensorrt_version=trt.__version__, gpu=gpu.name, compute_capability=gpu.compute_capability,
        files=files, onnx={g: {"file": p.onnx, "sha256": manifest.files[p.onnx]} for g, p in plan.graphs.items()},
        strongly_typed=plan.strongly_typed, plugin=plan.plugin, max_batch=max_batch, timing_cache=str(cache_path),
        log=log_name, notices=list(plan.notices))
    write_manifest(folder, with_engines(manifest, entry, hash_files(folder, files.values())))
    return BuildResult(plan=plan, entry=entry, sizes={g: len(d) for g, d in engines.items()},
                       seconds=time.perf_counter() - t0)
