"""`rvos-edge triton DIR --out REPO`: a model repository for NVIDIA Triton Inference Server.

    REPO/
      README.txt                      how to start the server on REPO and call it (the marker of the folder)
      text_encoder/config.pbtxt       dynamic batching: tokens -> text_feats, text_mask, text_global
      text_encoder/1/model.onnx       (model.plan for TensorRT)
      clip_model/config.pbtxt         sequence batching, the history as implicit state
      clip_model/1/model.onnx

The two models are the artifact folder's graphs (DESIGN.md section 4), copied byte for
byte: the ONNX of the chosen precision (with its external data files, if any) for the
onnxruntime backend, or the TensorRT engines of the manifest's engine entry of that
precision for the tensorrt backend.

``clip_model`` is stateful: the history a clip returns is the input of the stream's next
clip. Its config lets Triton's sequence batcher carry it (implicit state management):
``history`` / ``history_out`` is the state, zeros at a sequence's start
(``initial_state``); ``has_history`` is the CONTROL_SEQUENCE_START control input, which
Triton sets to 0 on a sequence's first request and to 1 after it (``fp32_false_true:
[1, 0]``). A client therefore sends only ``frames`` and the three text tensors (from
``text_encoder``, once per expression) with a sequence id per stream, and
``sequence_start`` on its first clip. The ``oldest`` strategy batches the clips of
different streams into one engine call, waiting up to the queue delay for them; a stream
silent for longer than the idle timeout is released (its next request must start again).
Up to `max_streams` streams are candidates for batching at once; later ones wait in
Triton's backlog until one of them is released.

Dims and dtypes come from the manifest's tensors: the batch dim is dropped (Triton adds
it, max_batch_size > 0) and a symbolic one (a clip-length range "Tc") becomes -1. Every
config is built as tritonclient's ``ModelConfig`` protobuf (``pip install
'rvos-edge[serve]'``) and written with ``google.protobuf.text_format``; it is parsed back
into the schema before it is written, so a config Triton's schema rejects is a bug here.
Importing this module imports neither tritonclient nor onnx (the CLI reads its choices).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvos_edge.artifacts.manifest import (
    CLIP_MODEL,
    GRAPH_NAMES,
    TEXT_ENCODER,
    GraphSpec,
    Manifest,
    ManifestError,
    TensorSpec,
    load_manifest,
)
from rvos_edge.artifacts.precision import check_backend, get_precision
from rvos_edge.artifacts.tensorrt import (
    EngineEntry,
    GpuInfo,
    check_engine_compat,
    engine_entry,
)
from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError
from rvos_edge.extras import require
from rvos_edge.fileio import atomic_write_bytes, make_folder, output_folder

if TYPE_CHECKING:
    import onnx
    from tritonclient.grpc import model_config_pb2 as pb

BACKENDS = ("onnxruntime", "tensorrt")
"""Triton backends a repository can be written for (the `backend` field of each config)."""
DEVICES = ("auto", "cpu", "gpu")
"""Where the onnxruntime backend's instances run: KIND_AUTO (a GPU when the server has one), KIND_CPU, KIND_GPU."""
MARKER = "README.txt"
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
STATE_INPUT, STATE_OUTPUT, START_CONTROL = "history", "history_out", "has_history"
DEFAULT_MAX_BATCH = 8           # onnxruntime; tensorrt defaults to the largest batch its engines were built for
VERSION = "1"

_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
          "float16": "TYPE_FP16", "float32": "TYPE_FP32"}
"""numpy dtype name (the manifest's) -> Triton DataType."""
_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class RepoOptions:
    """How the repository serves the models.

    precision: the folder's graphs or engines of this precision (None: the folder's base precision).
    max_batch: max_batch_size of both models (None: DEFAULT_MAX_BATCH, or the engines' largest batch).
    instances: model instances per device (instance_group count).
    device: onnxruntime only, one of DEVICES; tensorrt instances are always on the GPU.
    max_streams: sequences the clip model's oldest strategy batches from (max_candidate_sequences).
    idle_timeout_s: a stream silent this long is released (max_sequence_idle_microseconds).
    queue_delay_ms: how long a request waits for others to batch with (both models).
    """

    backend: str = "onnxruntime"
    precision: str | None = None
    max_batch: int | None = None
    instances: int = 1
    device: str = "auto"
    max_streams: int = 64
    idle_timeout_s: float = 60.0
    queue_delay_ms: float = 5.0

    def check(self) -> None:
        """A UserError naming the first option out of range."""
        if self.backend not in BACKENDS:
            raise UserError(f"unknown Triton backend {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r} (known: {', '.join(DEVICES)})")
        if self.backend == "tensorrt" and self.device == "cpu":
            raise UserError("TensorRT engines run on the GPU only: drop --device cpu or use --backend onnxruntime")
        for name, value in (("--max-batch", self.max_batch), ("--instances", self.instances),
                            ("--max-streams", self.max_streams)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.idle_timeout_s <= 0:
            raise UserError(f"--idle-timeout must be positive, got {self.idle_timeout_s:g}")
        if self.queue_delay_ms < 0:
            raise UserError(f"--queue-delay must be >= 0, got {self.queue_delay_ms:g}")


@dataclass(frozen=True)
class TritonRepo:
    """What `write_repository` wrote: where, for which backend and precision, and each model's file from DIR."""

    path: Path
    backend: str
    precision: str
    max_batch: int
    sources: dict[str, str]

    def summary(self) -> str:
        models = ", ".join(f"{model} ({source})" for model, source in self.sources.items())
        return (f"wrote Triton model repository {self.path} for the {self.backend} backend, {self.precision}, "
                f"max batch {self.max_batch}: {models}; start it as {self.path / MARKER} shows")


def dims(tensor: TensorSpec) -> list[int]:
    """Triton dims of a manifest tensor: its batch dim ("B") dropped, symbolic dims as -1."""
    if not tensor.shape or tensor.shape[0] != "B":
        raise ManifestError(f"tensor {tensor.name!r} has shape {list(tensor.shape)}, expected a leading batch dim 'B'")
    return [-1 if isinstance(d, str) else d for d in tensor.shape[1:]]


def _tensor(kind: type, tensor: TensorSpec) -> pb.ModelInput | pb.ModelOutput:
    """A ModelInput or ModelOutput for `tensor`."""
    return kind(name=tensor.name, data_type=_TYPES[tensor.dtype], dims=dims(tensor))


def _instance_group(options: RepoOptions) -> pb.ModelInstanceGroup:
    from tritonclient.grpc import model_config_pb2 as pb

    kind = "gpu" if options.backend == "tensorrt" else options.device
    return pb.ModelInstanceGroup(count=options.instances, kind=_KINDS[kind])


def text_encoder_config(graph: GraphSpec, options: RepoOptions, max_batch: int) -> pb.ModelConfig:
    """The text encoder: tokens in, the three text tensors out, requests of several clients batched together."""
    from tritonclient.grpc import model_config_pb2 as pb

    return pb.ModelConfig(
        name=TEXT_ENCODER, backend=options.backend, max_batch_size=max_batch,
        input=[_tensor(pb.ModelInput, t) for t in graph.inputs],
        output=[_tensor(pb.ModelOutput, t) for t in graph.outputs],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=round(options.queue_delay_ms * 1000)),
        instance_group=[_instance_group(options)])


def clip_model_config(graph: GraphSpec, options: RepoOptions, max_batch: int) -> pb.ModelConfig:
    """The clip model: the history as implicit state, has_history as the START control, the oldest strategy."""
    from tritonclient.grpc import model_config_pb2 as pb

    by_name = {t.name: t for t in (*graph.inputs, *graph.outputs)}
    history, start = by_name[STATE_INPUT], by_name[START_CONTROL]
    if start.dtype != "float32" or dims(start) != [1]:
        raise ManifestError(f"{START_CONTROL} must be float32 [B, 1] to be Triton's START control, "
                            f"got {start.dtype} {list(start.shape)}")
    state_type, state_dims = _TYPES[history.dtype], dims(history)
    state = pb.ModelSequenceBatching.State(
        input_name=STATE_INPUT, output_name=STATE_OUTPUT, data_type=state_type, dims=state_dims,
        initial_state=[pb.ModelSequenceBatching.InitialState(
            name="zeros", data_type=state_type, dims=state_dims, zero_data=True)])
    control = pb.ModelSequenceBatching.ControlInput(name=START_CONTROL, control=[pb.ModelSequenceBatching.Control(
        kind="CONTROL_SEQUENCE_START", fp32_false_true=[1.0, 0.0])])
    oldest = pb.ModelSequenceBatching.StrategyOldest(
        max_candidate_sequences=options.max_streams, preferred_batch_size=[max_batch],
        max_queue_delay_microseconds=round(options.queue_delay_ms * 1000))
    implicit = {STATE_INPUT, STATE_OUTPUT, START_CONTROL}
    return pb.ModelConfig(
        name=CLIP_MODEL, backend=options.backend, max_batch_size=max_batch,
        input=[_tensor(pb.ModelInput, t) for t in graph.inputs if t.name not in implicit],
        output=[_tensor(pb.ModelOutput, t) for t in graph.outputs if t.name not in implicit],
        sequence_batching=pb.ModelSequenceBatching(
            max_sequence_idle_microseconds=round(options.idle_timeout_s * 1e6),
            control_input=[control], state=[state], oldest=oldest),
        instance_group=[_instance_group(options)])


def to_pbtxt(config: pb.ModelConfig) -> str:
    """`config` as config.pbtxt text, checked by parsing it back into the ModelConfig schema.

    Text format leaves out proto3 fields at their default, enums included, so a comment names the two
    defaults this repository relies on.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    header = ("# written by rvos-edge triton; enums at their default are not printed: an instance_group without\n"
              "# kind is KIND_AUTO, a control without kind CONTROL_SEQUENCE_START\n")
    text = header + text_format.MessageToString(config)
    parsed = text_format.Parse(text, pb.ModelConfig())
    if parsed != config:
        raise AssertionError(f"config.pbtxt of {config.name} does not parse back to the config it was written from")
    return text


def _external_data(model_path: Path) -> list[str]:
    """The external data files an ONNX file refers to (relative to its folder), without loading them."""
    import onnx

    def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    model = onnx.load(str(model_path), load_external_data=False)
    return sorted({entry.value for t in tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                   for entry in t.external_data if entry.key == "location"})


def _engines(folder: Path, manifest: Manifest, options: RepoOptions, precision: str) -> EngineEntry:
    """The folder's TensorRT engines of `precision`, refused in one line when Triton cannot serve them as asked."""
    name = str(folder)
    entry = engine_entry(manifest, precision, name)
    # The server's TensorRT and GPU are not known here, so only engines whose ONNX changed since are refused.
    built_for = GpuInfo(entry.gpu, entry.compute_capability)
    check_engine_compat(entry, manifest.files, name, entry.tensorrt_version, built_for)
    build = f"rvos-edge build {name} --backend trt --precision {precision}"
    if entry.plugin == "jit":
        raise UserError(f"the {precision} engines of {name} run the CubeFrameAttention plugin just in time, in the "
                        "Python process that registers it, which Triton's TensorRT backend is not: rebuild them "
                        f"with TensorRT >= 10.9 (the plugin compiled into the engine) as `{build}`, or from a folder "
                        "exported without --attention plugin")
    if options.max_batch is not None and options.max_batch > entry.max_batch:
        raise UserError(f"the {precision} engines of {name} take batches of up to {entry.max_batch}, not "
                        f"{options.max_batch}: rebuild them with `{build} --max-batch {options.max_batch}`")
    return entry


def _copy(source: Path, target: Path) -> None:
    """Copy a model file byte for byte; a UserError (one line) when it cannot be read or written."""
    try:
        shutil.copyfile(source, target)
    except OSError as e:
        raise UserError(f"cannot copy {source} to {target}: {e.strerror or e}") from None


def write_repository(folder: str | Path, out: str | Path, options: RepoOptions = RepoOptions()) -> TritonRepo:
    """Write the model repository of artifact folder `folder` to `out`, as one unit (module docstring)."""
    require("serve", "rvos-edge triton", modules=("tritonclient",))
    options.check()
    folder, out = Path(folder), Path(out)
    manifest = load_manifest(folder)
    precision = options.precision or manifest.precision
    check_backend(get_precision(precision), "trt" if options.backend == "tensorrt" else "ort")   # no bf16 here
    engines: EngineEntry | None = None
    if options.backend == "tensorrt":
        engines = _engines(folder, manifest, options, precision)
        sources = {model: [engines.files[model]] for model in GRAPH_NAMES}
        max_batch = options.max_batch or engines.max_batch
    else:
        files = manifest.graph_files(precision)
        sources = {model: [files[model], *_external_data(folder / files[model])] for model in GRAPH_NAMES}
        max_batch = options.max_batch or DEFAULT_MAX_BATCH
    configs = {TEXT_ENCODER: text_encoder_config(manifest.graphs[TEXT_ENCODER], options, max_batch),
               CLIP_MODEL: clip_model_config(manifest.graphs[CLIP_MODEL], options, max_batch)}
    texts = {model: to_pbtxt(config) for model, config in configs.items()}
    with output_folder(out, MARKER) as staging:
        for model, (source, *beside) in sources.items():
            version = make_folder(staging / model / VERSION)
            _copy(folder / source, version / MODEL_FILES[options.backend])
            for data_file in beside:            # external data, under the name the ONNX file refers to
                make_folder((version / data_file).parent)
                _copy(folder / data_file, version / data_file)
            atomic_write_bytes(staging / model / "config.pbtxt", texts[model].encode())
        atomic_write_bytes(staging / MARKER, readme(out, options, precision, manifest.config, engines).encode())
    return TritonRepo(out, options.backend, precision, max_batch, {model: s[0] for model, s in sources.items()})


def readme(out: Path, options: RepoOptions, precision: str, config: ModelConfig, engines: EngineEntry | None) -> str:
    """REPO/README.txt: what the repository holds, the server's command line and a client sketch."""
    gpus = "--gpus all " if options.backend == "tensorrt" or options.device != "cpu" else ""
    note = ""
    if engines is not None:
        note = (f"\nThe engines run only with TensorRT {engines.tensorrt_version} on a {engines.gpu} (compute "
                f"capability {engines.compute_capability}): pick the tritonserver release that ships that TensorRT.\n")
    return f"""rvos-edge Triton model repository ({options.backend} backend, {precision})

text_encoder  tokens int64 [B, {config.context_length}] -> text_feats, text_mask, text_global (dynamic batching)
clip_model    frames uint8 [B, Tc, {config.image_size}, {config.image_size}, 3] RGB + the text tensors -> mask_logits
              sequence batching: one sequence id per camera stream, sequence_start on its first clip;
              the history is Triton's implicit state (zeros at the start), has_history its START control
{note}
Start the server (the official NGC container; YY.MM is its release):

  docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "{out.resolve()}:/models" \\
      nvcr.io/nvidia/tritonserver:YY.MM-py3 tritonserver --model-repository=/models

Call it (pip install 'rvos-edge[serve]'):

  import tritonclient.grpc as grpcclient
  from tritonclient.utils import np_to_triton_dtype
  from rvos_edge.tokenizer import tokenize_for_prompts

  client = grpcclient.InferenceServerClient("localhost:8001")

  def infer(model, arrays, outputs, **sequence):
      inputs = []
      for name, array in arrays.items():
          inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
          inputs[-1].set_data_from_numpy(array)
      result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs], **sequence)
      return {{o: result.as_numpy(o) for o in outputs}}

  tokens = tokenize_for_prompts(["the red cup"], {config.language_prompts}, {config.context_length}).tokens
  text = infer("text_encoder", {{"tokens": tokens}}, ["text_feats", "text_mask", "text_global"])
  for k, clip in enumerate(clips):                 # uint8 [1, Tc, {config.image_size}, {config.image_size}, 3], RGB
      logits = infer("clip_model", {{"frames": clip, **text}}, ["mask_logits"],
                     sequence_id=stream_id, sequence_start=(k == 0))["mask_logits"]
"""
