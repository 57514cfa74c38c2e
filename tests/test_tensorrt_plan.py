"""TensorRT build plans for every (TensorRT version, precision, artifacts present, plugin) case, profiles,
calibration-cache headers: all pure, no TensorRT needed."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fake_artifacts import TINY, make_fake_artifacts

from rvos_edge.artifacts.calib_cache import calibration_cache_for
from rvos_edge.artifacts.manifest import hash_files, load_manifest, write_manifest
from rvos_edge.artifacts.tensorrt import plugin_section
from rvos_edge.engines.trt.plan import ArtifactSet, GraphPlan, TrtVersion, plan_build, profile_shapes
from rvos_edge.errors import UserError

BASE = {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.onnx"}
FP16 = {"text_encoder": "text_encoder.fp16.onnx", "clip_model": "clip_model.fp16.onnx"}
INT8 = {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.int8.onnx"}   # text encoder left in float
CACHE = {"clip_model": "clip_model.calib.cache"}
PLUGIN = "clip_model.plugin.onnx"

ARTIFACTS = {
    "base": ArtifactSet("art", BASE),
    "fp16": ArtifactSet("art", BASE, {"fp16": FP16}),
    "qdq": ArtifactSet("art", BASE, {"int8": INT8}),
    "qdq-all": ArtifactSet("art", BASE, {"int8": {g: f.replace(".onnx", ".int8.onnx") for g, f in BASE.items()}}),
    "qdq+cache": ArtifactSet("art", BASE, {"int8": INT8}, CACHE),
    "cache": ArtifactSet("art", BASE, {}, CACHE),
    "plugin": ArtifactSet("art", BASE, {}, {}, PLUGIN),
    "plugin+fp16": ArtifactSet("art", BASE, {"fp16": FP16}, {}, PLUGIN),
    "plugin+qdq": ArtifactSet("art", BASE, {"int8": INT8}, {}, PLUGIN),
}

W16, W8 = ("FP16",), ("INT8", "FP16")
# (version, precision, artifacts, plugin blocker) ->
#   (strongly typed, network flags, cleared flags, {graph: GraphPlan}, plugin, notice fragments)
CASES = {
    "10.3 fp32": ("10.3.0", "fp32", "base", None,
                  (False, (), ("TF32",), {"text_encoder": GraphPlan(BASE["text_encoder"]),
                                          "clip_model": GraphPlan(BASE["clip_model"])}, None, [])),
    "10.3 fp16: FP16 flag on the FP32 graphs": (
        "10.3.0", "fp16", "fp16", None,
        (False, (), (), {"text_encoder": GraphPlan(BASE["text_encoder"], W16),
                         "clip_model": GraphPlan(BASE["clip_model"], W16)}, None, [])),
    "10.3 int8 from Q/DQ (the float text encoder gets FP16 only)": (
        "10.3.0", "int8", "qdq", None,
        (False, (), (), {"text_encoder": GraphPlan(INT8["text_encoder"], W16),
                         "clip_model": GraphPlan(INT8["clip_model"], W8)}, None, [])),
    "10.3 int8, both graphs quantized": (
        "10.3.0", "int8", "qdq-all", None,
        (False, (), (), {"text_encoder": GraphPlan("text_encoder.int8.onnx", W8),
                         "clip_model": GraphPlan("clip_model.int8.onnx", W8)}, None, [])),
    "10.3 int8: Q/DQ preferred over the cache": (
        "10.3.0", "int8", "qdq+cache", None,
        (False, (), (), {"text_encoder": GraphPlan(INT8["text_encoder"], W16),
                         "clip_model": GraphPlan(INT8["clip_model"], W8)}, None, [])),
    "10.3 int8 from the calibration cache": (
        "10.3.0", "int8", "cache", None,
        (False, (), (), {"text_encoder": GraphPlan(BASE["text_encoder"], W16),
                         "clip_model": GraphPlan(BASE["clip_model"], W8, CACHE["clip_model"])}, None,
         ["calibration caches", "deprecated since TensorRT 10.1", "text_encoder has no calibration cache"])),
    "11 fp32": ("11.0.0", "fp32", "fp16", None,
                (True, (), ("TF32",), {"text_encoder": GraphPlan(BASE["text_encoder"]),
                                       "clip_model": GraphPlan(BASE["clip_model"])}, None, [])),
    "11 fp16 from the fp16 ONNX": ("11.0.0", "fp16", "fp16", None,
                                   (True, (), (), {"text_encoder": GraphPlan(FP16["text_encoder"]),
                                                   "clip_model": GraphPlan(FP16["clip_model"])}, None, [])),
    "11 int8 from the Q/DQ ONNX, cache unused": (
        "11.1.0", "int8", "qdq+cache", None,
        (True, (), (), {"text_encoder": GraphPlan(INT8["text_encoder"]),
                        "clip_model": GraphPlan(INT8["clip_model"])}, None, [])),
    "10.3 has no Python plugins": (
        "10.3.0", "fp32", "plugin", None,
        (False, (), ("TF32",), {"text_encoder": GraphPlan(BASE["text_encoder"]),
                                "clip_model": GraphPlan(BASE["clip_model"])}, None,
         ["TensorRT 10.3.0 has no Python plugins", "building the decomposed clip graph"])),
    "10.6 just-in-time plugin": (
        "10.6.0", "fp16", "plugin", None,
        (False, (), (), {"text_encoder": GraphPlan(BASE["text_encoder"], W16), "clip_model": GraphPlan(PLUGIN, W16)},
         "jit", ["just in time", "needs Python"])),
    "10.9 ahead-of-time plugin": (
        "10.9.0", "fp32", "plugin", None,
        (False, ("PREFER_AOT_PYTHON_PLUGINS",), ("TF32",),
         {"text_encoder": GraphPlan(BASE["text_encoder"]), "clip_model": GraphPlan(PLUGIN)}, "aot", [])),
    "plugin blocked on this machine": (
        "10.9.0", "fp32", "plugin", "triton is not installed",
        (False, (), ("TF32",), {"text_encoder": GraphPlan(BASE["text_encoder"]),
                                "clip_model": GraphPlan(BASE["clip_model"])}, None,
         ["plugin is unavailable (triton is not installed)", "decomposed clip graph"])),
    "10.9 int8: no INT8 plugin graph": (
        "10.9.0", "int8", "plugin+qdq", None,
        (False, (), (), {"text_encoder": GraphPlan(INT8["text_encoder"], W16),
                         "clip_model": GraphPlan(INT8["clip_model"], W8)}, None, ["plugin graph is FP32"])),
    "11 fp32 plugin (AOT)": (
        "11.0.0", "fp32", "plugin+fp16", None,
        (True, ("PREFER_AOT_PYTHON_PLUGINS",), ("TF32",),
         {"text_encoder": GraphPlan(BASE["text_encoder"]), "clip_model": GraphPlan(PLUGIN)}, "aot", [])),
    "11 fp16: the plugin graph is FP32": (
        "11.0.0", "fp16", "plugin+fp16", None,
        (True, (), (), {"text_encoder": GraphPlan(FP16["text_encoder"]), "clip_model": GraphPlan(FP16["clip_model"])},
         None, ["plugin graph is FP32", "decomposed fp16 graphs"])),
}

IMPOSSIBLE = {
    "11 fp16 without the fp16 ONNX": ("11.0.0", "fp16", "base",
                                      ["strongly typed", "art has no fp16 graphs",
                                       "`rvos-edge build art --backend ort --precision fp16` first"]),
    "11 int8 without Q/DQ (a cache is not enough)": (
        "11.0.0", "int8", "cache", ["INT8 only from Q/DQ graphs", "`rvos-edge calib art --data DATA` first"]),
    "10.3 int8 with neither Q/DQ nor cache": (
        "10.3.0", "int8", "fp16", ["no INT8 graphs or calibration caches", "`rvos-edge calib art --data DATA`"]),
    "TensorRT 8.6": ("8.6.1", "fp32", "base", ["TensorRT 8.6.1 is too old", "pip install 'rvos-edge[trt]'"]),
    "unknown precision": ("10.3.0", "int4", "base", ["unknown precision 'int4'"]),
    "bf16 is OpenVINO's": ("11.0.0", "bf16", "base", ["bf16 is an execution precision of the openvino backend",
                                                      "the trt backend cannot run it; use --backend openvino"]),
}


@pytest.mark.parametrize("case", CASES)
def test_build_plan(case: str) -> None:
    version, precision, artifacts, blocker, expected = CASES[case]
    strong, network_flags, cleared, graphs, plugin, notices = expected
    plan = plan_build(TrtVersion.parse(version), precision, ARTIFACTS[artifacts], blocker)
    assert (plan.strongly_typed, plan.network_flags, plan.cleared_flags, plan.plugin) == \
        (strong, network_flags, cleared, plugin)
    assert plan.graphs == graphs
    text = " | ".join(plan.notices)
    assert all(fragment in text for fragment in notices), text
    assert bool(plan.notices) == bool(notices)
    assert f"TensorRT {TrtVersion.parse(version)}, {precision}" in plan.describe()


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_plans_are_one_line_user_errors(case: str) -> None:
    version, precision, artifacts, fragments = IMPOSSIBLE[case]
    with pytest.raises(UserError) as e:
        plan_build(TrtVersion.parse(version), precision, ARTIFACTS[artifacts])
    assert all(f in str(e.value) for f in fragments) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("text, version, plugins", [
    ("10.3.0", (10, 3, 0), None), ("10.3.0.26", (10, 3, 0), None), ("10.6.0.26", (10, 6, 0), "jit"),
    ("10.8.0", (10, 8, 0), "jit"), ("10.9.0.34", (10, 9, 0), "aot"), ("11.0", (11, 0, 0), "aot"),
])
def test_version(text: str, version: tuple, plugins: str | None) -> None:
    v = TrtVersion.parse(text)
    assert (v.major, v.minor, v.patch) == version and v.python_plugins == plugins
    assert str(v) == ".".join(map(str, version))
    with pytest.raises(UserError, match="cannot read the TensorRT version"):
        TrtVersion.parse("ten")


def test_profiles_static_clip_length() -> None:
    cfg = TINY                        # S 64, Ce 64, m_h 2, Tc 3
    p = profile_shapes(cfg, (3, 3), max_batch=4)
    assert p["text_encoder"] == {"tokens": ((1, 77), (1, 77), (4, 77))}
    clip = p["clip_model"]
    assert clip["frames"] == ((1, 3, 64, 64, 3), (1, 3, 64, 64, 3), (4, 3, 64, 64, 3))
    assert clip["history"] == ((1, 2, 64), (1, 2, 64), (4, 2, 64))
    assert clip["has_history"] == ((1, 1), (1, 1), (4, 1))
    assert set(clip) == {"frames", "text_feats", "text_mask", "text_global", "history", "has_history"}


@pytest.mark.parametrize("clip_len, tc", [((1, 6), (1, 3, 6)), ((4, 8), (4, 4, 8)), ((1, 2), (1, 2, 2))])
def test_profiles_clip_length_range(clip_len: tuple[int, int], tc: tuple[int, int, int]) -> None:
    # Tc from the export's range, optimised for the model's clip length (tiny: 3) brought into the range
    frames = profile_shapes(TINY, clip_len, 2)["clip_model"]["frames"]
    assert frames == ((1, tc[0], 64, 64, 3), (1, tc[1], 64, 64, 3), (2, tc[2], 64, 64, 3))
    assert profile_shapes(TINY, clip_len, 2)["clip_model"]["history"] == ((1, 2, 64), (1, 2, 64), (2, 2, 64))


def test_profiles_need_a_batch() -> None:
    with pytest.raises(UserError, match="--max-batch must be >= 1"):
        profile_shapes(TINY, (3, 3), 0)


def test_artifact_set_from_a_manifest(tmp_path: Path) -> None:
    art = make_fake_artifacts(tmp_path / "art", variants={"int8": 0.0})
    (art / "clip_model.calib.cache").write_text("TRT-100300-EntropyCalibration2\n")
    (art / PLUGIN).write_bytes((art / "clip_model.onnx").read_bytes())
    m = load_manifest(art)
    m = dataclasses.replace(m, calibration={"method": "entropy", "cache": dict(CACHE)},
                            tensorrt={"plugin": plugin_section(PLUGIN)},
                            files={**m.files, **hash_files(art, [CACHE["clip_model"], PLUGIN])})
    write_manifest(art, m)
    s = ArtifactSet.from_manifest(load_manifest(art), str(art))
    assert s.base == BASE and s.variants == {"int8": {"text_encoder": "text_encoder.int8.onnx",
                                                      "clip_model": "clip_model.int8.onnx"}}
    assert s.calibration == CACHE and s.plugin_graph == PLUGIN and s.folder == str(art)


@pytest.mark.parametrize("version, number", [("10.7.0", b"100700"), ("10.3.0", b"100300"), ("11.1.2", b"110102")])
def test_calibration_cache_header_is_rewritten_for_the_installed_version(version: str, number: bytes) -> None:
    body = b"input.1: 3c010a14\nnode_MatMul_12: 3d8f5c29\n"
    cache, algorithm = calibration_cache_for(b"TRT-100300-EntropyCalibration2\n" + body, version)
    assert cache == b"TRT-" + number + b"-EntropyCalibration2\n" + body and algorithm == "EntropyCalibration2"
    _, algorithm = calibration_cache_for(b"TRT-8601-MinMaxCalibration\n" + body, version)
    assert algorithm == "MinMaxCalibration"
    with pytest.raises(UserError, match="not a TensorRT calibration cache"):
        calibration_cache_for(b"hello\n" + body, version)
