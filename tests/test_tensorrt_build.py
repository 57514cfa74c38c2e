"""The TensorRT builder's glue on Polygraphy, on the CPU: the plan -> Polygraphy CreateConfig / Profile mapping and the
calibrator that only reads a calibration cache, checked on Polygraphy's real classes; the network creation flags
Polygraphy cannot set; build_engines end to end with Polygraphy's two builder calls that need TensorRT's builder
(network_from_onnx_path, engine_bytes_from_network) replaced by autospecs, which hold our calls to their real
signatures, and everything else real (the fake tensorrt module and libcudart of tests/fake_tensorrt.py)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from fake_artifacts import TINY, make_fake_artifacts
from fake_tensorrt import FakeTrt, IInt8EntropyCalibrator2, IInt8MinMaxCalibrator
from polygraphy.backend import trt as polygraphy_trt
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER
from test_tensorrt_backend import install_fake_tensorrt

from rvos_edge.cli import main
from rvos_edge.engines.trt.build import build_engines, cache_calibrator, create_config, network
from rvos_edge.engines.trt.plan import ArtifactSet, TrtVersion, plan_build, profile_shapes
from rvos_edge.errors import UserError

BASE = {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.onnx"}
INT8 = {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.int8.onnx"}
WORKSPACE = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="workspace pool"))   # what create_config reads


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTrt:
    return install_fake_tensorrt(monkeypatch)[0]


@pytest.mark.parametrize("version, precision, artifacts, flags", [
    ("10.3.0", "fp32", ArtifactSet("art", BASE), {"tf32": False, "fp16": False, "int8": False}),
    ("10.3.0", "fp16", ArtifactSet("art", BASE), {"tf32": True, "fp16": True, "int8": False}),
    ("10.3.0", "int8", ArtifactSet("art", BASE, {"int8": INT8}), {"tf32": True, "fp16": True, "int8": True}),
    ("11.0.0", "int8", ArtifactSet("art", BASE, {"int8": INT8}), {"tf32": True, "fp16": False, "int8": False}),
    ("11.0.0", "fp32", ArtifactSet("art", BASE), {"tf32": False, "fp16": False, "int8": False}),
])
def test_create_config_maps_the_plan_onto_polygraphy(version: str, precision: str, artifacts: ArtifactSet,
                                                     flags: dict, tmp_path: Path) -> None:
    plan = plan_build(TrtVersion.parse(version), precision, artifacts)
    shapes = profile_shapes(TINY, (1, 6), max_batch=4)["clip_model"]
    cache = tmp_path / "tensorrt.timing.cache"
    config = create_config(WORKSPACE, plan, plan.graphs["clip_model"], shapes, 1.5, cache)
    assert isinstance(config, polygraphy_trt.CreateConfig)
    assert {k: getattr(config, k) for k in flags} == flags
    assert config.memory_pool_limits == {"workspace pool": int(1.5 * 2 ** 30)} and config.calibrator is None
    assert config.timing_cache_path is None                    # no cache file yet: Polygraphy starts an empty one
    [profile] = config.profiles
    assert isinstance(profile, polygraphy_trt.Profile) and list(profile) == list(shapes)
    assert {name: tuple(profile[name]) for name in profile} == shapes
    assert profile["frames"].max == (4, 6, 64, 64, 3) and profile["frames"].opt == (1, 3, 64, 64, 3)
    cache.write_bytes(b"timings")
    default = create_config(WORKSPACE, plan, plan.graphs["clip_model"], shapes, None, cache)
    assert default.timing_cache_path == str(cache) and default.memory_pool_limits is None


def test_the_calibration_cache_calibrator_reads_only_the_cache(fake_trt) -> None:
    body = b"input.1: 3c010a14\nnode_MatMul_12: 3d8f5c29\n"
    plan = plan_build(TrtVersion(10, 7, 0), "int8", ArtifactSet("art", BASE, {}, {"clip_model": "c.cache"}))
    with tempfile.TemporaryFile() as file:
        calibrator = cache_calibrator(fake_trt, b"TRT-100300-MinMaxCalibration\n" + body, plan.version, file)
        config = create_config(WORKSPACE, plan, plan.graphs["clip_model"], {}, None, Path("none"), calibrator)
        assert isinstance(calibrator, IInt8MinMaxCalibrator) and config.calibrator is calibrator and config.int8
        assert calibrator.read_calibration_cache() == b"TRT-100700-MinMaxCalibration\n" + body   # for 10.7
        assert calibrator.get_batch(["input.1"]) is None                                    # no data at all
    with tempfile.TemporaryFile() as file:
        assert isinstance(cache_calibrator(fake_trt, b"TRT-8601-EntropyCalibration2\n", plan.version, file),
                          IInt8EntropyCalibrator2)
    with tempfile.TemporaryFile() as file, pytest.raises(UserError, match="algorithm 'LegacyCalibration' is not"):
        cache_calibrator(fake_trt, b"TRT-100300-LegacyCalibration\n", plan.version, file)


class Parser:
    """trt.OnnxParser for `network`: parses when `ok`, else reports one error."""

    def __init__(self, ok: bool) -> None:
        self.ok, self.num_errors, self.paths = ok, 0 if ok else 1, []

    def parse_from_file(self, path: str) -> bool:
        self.paths.append(path)
        return self.ok

    def get_error(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(desc=lambda: "In node 3 (importPlugin): UNSUPPORTED_NODE: no plugin creator")


def test_network_creation_flags_polygraphy_cannot_set(fake_trt, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    artifacts = ArtifactSet("art", BASE, plugin_graph="clip_model.plugin.onnx")
    aot = plan_build(TrtVersion(10, 9, 0), "fp32", artifacts)
    parser = Parser(ok=True)
    builder = SimpleNamespace(create_network=mock.Mock(return_value="network"))
    trt = SimpleNamespace(Builder=mock.Mock(return_value=builder), OnnxParser=mock.Mock(return_value=parser),
                          NetworkDefinitionCreationFlag=fake_trt.NetworkDefinitionCreationFlag)
    assert network(trt, tmp_path / "clip_model.plugin.onnx", aot) == (builder, "network", parser)
    builder.create_network.assert_called_once_with(1 << int(fake_trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS))
    assert parser.paths == [str(tmp_path / "clip_model.plugin.onnx")]
    assert trt.Builder.call_args.args == (polygraphy_trt.get_trt_logger(),)   # Polygraphy's logger: messages captured
    trt.OnnxParser.return_value = Parser(ok=False)
    with pytest.raises(UserError, match="TensorRT cannot parse clip_model.plugin.onnx: In node 3 .*no plugin creator"):
        network(trt, tmp_path / "clip_model.plugin.onnx", aot)
    loader = mock.create_autospec(polygraphy_trt.network_from_onnx_path, return_value=("b", "n", "p"))
    monkeypatch.setattr(polygraphy_trt, "network_from_onnx_path", loader)
    plain = plan_build(TrtVersion(10, 9, 0), "fp32", ArtifactSet("art", BASE))
    assert network(trt, tmp_path / "clip_model.onnx", plain) == ("b", "n", "p")
    loader.assert_called_once_with(str(tmp_path / "clip_model.onnx"))


@pytest.fixture()
def polygraphy_builder(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Polygraphy's network_from_onnx_path and engine_bytes_from_network as autospecs (their real signatures):
    the network is the ONNX path, the engine the bytes b"engine of <path>"."""
    calls = SimpleNamespace(
        network=mock.create_autospec(polygraphy_trt.network_from_onnx_path, side_effect=lambda path: ("b", path, "p")),
        engine=mock.create_autospec(polygraphy_trt.engine_bytes_from_network,
                                    side_effect=lambda network, config, save_timing_cache: f"engine of {network[1]}"
                                    .encode()))
    monkeypatch.setattr(polygraphy_trt, "network_from_onnx_path", calls.network)
    monkeypatch.setattr(polygraphy_trt, "engine_bytes_from_network", calls.engine)
    return calls


def test_build_engines_on_polygraphy(fake_trt, polygraphy_builder, tmp_path: Path) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    result = build_engines(art, "fp16", workspace_gb=1, max_batch=2, progress=False)
    entry = json.loads((art / "manifest.json").read_text())["tensorrt"]["engines"]["fp16"]
    assert result.entry.to_dict() == entry
    assert (entry["tensorrt_version"], entry["gpu"], entry["compute_capability"], entry["max_batch"]) == \
        ("10.3.0", "Fake GPU", "8.7", 2)
    assert [c.args[0] for c in polygraphy_builder.network.call_args_list] == \
        [str(art / "text_encoder.onnx"), str(art / "clip_model.onnx")]
    for graph, call in zip(("text_encoder", "clip_model"), polygraphy_builder.engine.call_args_list):
        assert (art / f"{graph}.fp16.engine").read_bytes() == f"engine of {art / f'{graph}.onnx'}".encode()
        config = call.kwargs["config"]
        assert isinstance(config, polygraphy_trt.CreateConfig) and config.fp16 and config.tf32 and not config.int8
        assert {n: tuple(s) for n, s in config.profiles[0].items()} == profile_shapes(TINY, (3, 3), 2)[graph]
        assert config.memory_pool_limits == {fake_trt.MemoryPoolType.WORKSPACE: 2 ** 30}
        assert call.kwargs["save_timing_cache"] == str(art / "tensorrt.timing.cache") == entry["timing_cache"]
    log = (art / entry["log"]).read_text()
    assert log.startswith(result.plan.describe() + "\nGPU: Fake GPU (compute capability 8.7)\n")
    assert "profile clip_model frames: min (1, 3, 64, 64, 3) opt (1, 3, 64, 64, 3) max (2, 3, 64, 64, 3)" in log
    assert "[I] TF32 is disabled" not in log                      # TF32 stays on for fp16 (TensorRT's default)


def test_a_failed_build_is_one_line_with_tensorrt_s_error(fake_trt, polygraphy_builder, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")

    def fail(network, config, save_timing_cache) -> bytes:
        G_LOGGER.error("[myelinBuilder.cpp::build::20] Error Code 2: Internal Error (out of memory)")
        G_LOGGER.critical("Invalid Engine. Please ensure the engine was built correctly")

    polygraphy_builder.engine.side_effect = fail
    assert main(["build", str(art), "--backend", "trt", "--precision", "fp32"]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "engine/s" not in line]
    assert out == "" and len(lines) == 1, (out, err)            # one line besides the progress bar
    assert "TensorRT could not build text_encoder from text_encoder.onnx: [myelinBuilder.cpp::build::20] Error " \
           "Code 2: Internal Error (out of memory)" in err
    log = (art / "tensorrt_build.fp32.log").read_text()           # written although the build failed
    assert "[E] [myelinBuilder.cpp::build::20]" in log and "[!] Invalid Engine" in log
    assert "tensorrt" not in json.loads((art / "manifest.json").read_text())
    with pytest.raises(PolygraphyException):                     # Polygraphy's logger is itself again
        G_LOGGER.critical("after the build")


def test_a_network_polygraphy_cannot_parse_is_one_line(fake_trt, polygraphy_builder, tmp_path: Path) -> None:
    art = make_fake_artifacts(tmp_path / "art")

    def fail(path: str) -> None:
        G_LOGGER.error("In node 12 (parseGraph): INVALID_NODE: Invalid Node - Gather_3")
        G_LOGGER.critical("Could not parse ONNX correctly")

    polygraphy_builder.network.side_effect = fail
    with pytest.raises(UserError) as e:
        build_engines(art, "fp32", progress=False)
    assert str(e.value) == "TensorRT cannot parse text_encoder.onnx: In node 12 (parseGraph): INVALID_NODE: " \
                           "Invalid Node - Gather_3"
