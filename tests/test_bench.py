"""`rvos-edge bench`: percentiles on known samples, every documented JSON field, errors, GPU path, and
`--backend all` (one row per installed CPU setting, each in its own process, the fastest within tolerance)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fake_artifacts import make_fake_artifacts

from rvos_edge.bench import (
    fastest_within_tolerance,
    latency_stats,
    machine_name,
    markdown_table,
    percentile,
    vm_peak_mb,
)
from rvos_edge.cli import main
from rvos_edge.errors import UserError

# The fields the rvos_edge.bench docstring documents (schema rvos-edge-bench/1).
TOP = {"schema", "timestamp", "model", "backend", "precision", "device", "threads", "clip_len", "batch",
       "environment", "machine", "flops", "first_result", "engine", "end_to_end", "memory"}
FIELDS = {
    "model": {"name", "source", "image_size"},
    "environment": {"cpu_model", "logical_cores", "usable_cores", "load_average_1m", "memory_gb", "gpu", "platform",
                    "python", "libraries", "ort_providers"},
    "flops": {"gmacs_per_frame", "gflops_per_frame", "convention"},
    "first_result": {"engine_load_ms", "text_ms", "first_clip_ms", "first_result_ms"},
    "engine": {"timer", "warmup_clips", "clips", "frames", "fps", "gflops_per_s", "latency_ms", "latencies_ms"},
    "end_to_end": {"video", "width", "height", "warmup_clips", "clips", "frames", "fps", "latency_ms",
                   "latencies_ms", "ms_per_frame"},
    "memory": {"peak_rss_mb", "peak_gpu_mb", "gpu_memory_source"},
}
LATENCY = {"n", "mean", "min", "max", "p50", "p90", "p99"}


def test_percentile_known_sample() -> None:
    sample = [40, 15, 50, 35, 20]                  # sorted: 15 20 35 40 50, ranks 0..4
    assert percentile(sample, 50) == 35            # rank 2
    assert percentile(sample, 90) == pytest.approx(46.0)     # rank 3.6: 40 + 0.6 * (50 - 40)
    assert percentile(sample, 99) == pytest.approx(49.6)     # rank 3.96: 40 + 0.96 * 10
    assert percentile(sample, 25) == 20            # rank 1
    assert percentile(sample, 0) == 15 and percentile(sample, 100) == 50
    assert percentile([1, 2, 3, 4], 50) == 2.5     # rank 1.5
    assert percentile([7.0], 99) == 7.0
    stats = latency_stats([10.0, 20.0, 30.0, 40.0])
    assert stats == {"n": 4, "mean": 25.0, "min": 10.0, "max": 40.0,
                     "p50": 25.0, "p90": pytest.approx(37.0), "p99": pytest.approx(39.7)}
    with pytest.raises(UserError):
        percentile([], 50)
    with pytest.raises(UserError):
        percentile([1.0], 101)


def test_machine_name() -> None:
    env = {"cpu_model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "usable_cores": 16, "gpu": "NVIDIA H200"}
    assert machine_name(env) == "intel-xeon-gold-6338-16c-nvidia-h200"
    assert machine_name({"cpu_model": "AMD EPYC 7763 64-Core Processor", "usable_cores": 2, "gpu": None}) \
        == "amd-epyc-7763-64-core-2c"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rvos_edge.model import build_model, save_checkpoint
    path = tmp_path_factory.mktemp("bench") / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=0), path)
    return path


def _check_fields(d: dict) -> None:
    assert set(d) == TOP and d["schema"] == "rvos-edge-bench/1"
    for key, fields in FIELDS.items():
        if d[key] is not None:
            assert set(d[key]) == fields, key
    for section in ("engine", "end_to_end"):
        if d[section] is not None:
            lat = d[section]["latency_ms"]
            assert set(lat) == LATENCY and lat["n"] == d[section]["clips"] == len(d[section]["latencies_ms"])
            assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_bench_torch_json(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["bench", str(tiny_ckpt), "--threads", "1", "--frames", "7", "--warmup", "1", "--json", str(out),
            "--markdown", str(md)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[0].startswith("| model | backend |") and stdout[-1].startswith("tiny torch fp32 cpu threads=1 Tc=3 B=1")
    d = json.loads(out.read_text())
    _check_fields(d)
    assert (d["backend"], d["threads"], d["clip_len"], d["batch"], d["device"]) == ("torch", 1, 3, 1, "cpu")
    engine, e2e, first = d["engine"], d["end_to_end"], d["first_result"]
    assert engine["clips"] == 3 and engine["frames"] == 9 and engine["warmup_clips"] == 2     # ceil(7 / 3) clips
    assert engine["fps"] == pytest.approx(9 / (sum(engine["latencies_ms"]) / 1000))
    assert (e2e["clips"], e2e["frames"], e2e["width"], e2e["height"]) == (3, 9, 854, 480)
    assert set(e2e["ms_per_frame"]) == {"decode", "resize", "engine", "upsample"}
    assert first["first_result_ms"] == pytest.approx(first["engine_load_ms"] + first["text_ms"] + first["first_clip_ms"])
    assert d["memory"]["peak_rss_mb"] > 50 and d["memory"]["peak_gpu_mb"] is None
    assert d["environment"]["libraries"]["torch"] and d["machine"]
    assert md.read_text().strip() == markdown_table([d])


def test_bench_ort_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    out = tmp_path / "r.json"
    assert main(["bench", str(art), "--batch", "2", "--frames", "7", "--threads", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    _check_fields(d)
    assert d["backend"] == "ort" and d["end_to_end"] is None          # end to end runs at batch 1 only
    assert d["engine"]["clips"] == 2 and d["engine"]["frames"] == 12   # ceil(7 / (2 * 3)) clips of 6 frames


@pytest.mark.parametrize("extra, message", [
    (["--backend", "trt"], "TensorRT"),                  # not installed here (or no engines built)
    (["--precision", "int8"], "no int8 graphs"),
    (["--clip-len", "5"], "clip length 5 is not accepted"),
    (["--batch", "0"], "batch must be >= 1"),
])
def test_bench_bad_input(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    assert main(["bench", str(art), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.gpu
def test_bench_torch_cuda(tiny_ckpt: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "r.json"
    assert main(["bench", str(tiny_ckpt), "--device", "cuda", "--frames", "6", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    _check_fields(d)
    assert "cuda events" in d["engine"]["timer"] and d["memory"]["peak_gpu_mb"] > 0 and d["environment"]["gpu"]


def test_fastest_within_tolerance_never_picks_a_row_outside_it() -> None:
    rows = [{"backend": "ort", "precision": "fp32", "status": "ok", "fps": 10.0},
            {"backend": "openvino", "precision": "int8", "status": "off", "fps": 90.0},    # fastest, but off
            {"backend": "openvino", "precision": "bf16", "status": "ok", "fps": 40.0},
            {"backend": "openvino", "precision": "fp32", "status": "error", "note": "cannot compile"},
            {"backend": "trt", "precision": "fp16", "status": "skipped", "note": "not installed"}]
    assert fastest_within_tolerance(rows) is rows[2]
    rows[2]["status"] = "off"
    assert fastest_within_tolerance(rows) is rows[0]
    assert fastest_within_tolerance([r for r in rows if r["status"] != "ok"]) is None


def test_bench_all_one_row_per_cpu_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A fake folder with a broken int8 variant (its logits shifted by 3): every installed CPU setting runs in
    its own process; int8 is off (check's tolerance) and so never named, however fast."""
    art = make_fake_artifacts(tmp_path / "art", variants={"int8": 3.0})
    out, md = tmp_path / "all.json", tmp_path / "all.md"
    assert main(["bench", str(art), "--backend", "all", "--frames", "6", "--warmup", "0", "--threads", "1",
                 "--json", str(out), "--markdown", str(md)]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    d = json.loads(out.read_text())
    rows = {(r["backend"], r["precision"]): r for r in d["rows"]}
    # every CPU backend of the registry has a row; one this machine cannot run is "skipped" with its reason
    expected = [("ort", "fp32"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "int8"), ("openvino", "bf16")]
    if importlib.util.find_spec("openvino") is not None:
        from rvos_edge.engines.openvino.runner import cpu_capabilities, shared_core
        bf16 = "BF16" in cpu_capabilities(shared_core())
        assert rows[("openvino", "bf16")]["status"] == ("ok" if bf16 else "skipped")
    else:
        assert all(rows[("openvino", p)]["status"] == "skipped" for p in ("fp32", "int8", "bf16"))
    assert list(rows) == expected and d["schema"] == "rvos-edge-bench-all/1" and d["clips"] == 2
    ran = [r for r in d["rows"] if r["status"] != "skipped"]
    assert rows[("ort", "fp32")]["speedup_vs_ort_fp32"] == 1.0 and rows[("ort", "fp32")]["max_abs"] == 0.0
    for r in ran:
        assert r["status"] == ("off" if r["precision"] == "int8" else "ok"), r
        assert r["latency_ms"]["n"] == 2 and r["speedup_vs_ort_fp32"] == pytest.approx(r["fps"] / rows[("ort", "fp32")]["fps"])
        # each process's own peak: a fresh interpreter with a few KB of graphs, far below this pytest process's
        assert 30 < r["peak_rss_mb"] < vm_peak_mb()
    assert rows[("ort", "int8")]["note"].startswith("mask IoU")
    best = max((r for r in ran if r["status"] == "ok"), key=lambda r: r["fps"])
    assert (d["fastest"]["backend"], d["fastest"]["precision"]) == (best["backend"], best["precision"])
    table = md.read_text().strip().splitlines()
    assert len(table) == 2 + len(expected) and stdout[:len(table)] == table
    assert stdout[-1] == (f"tiny on {len(ran)} CPU settings (threads=1 Tc=3 B=1): fastest within check's tolerance: "
                          f"{best['backend']} {best['precision']}, {best['fps']:.2f} FPS = "
                          f"{best['speedup_vs_ort_fp32']:.2f}x ONNX Runtime FP32")


@pytest.mark.parametrize("extra, message", [
    (["--precision", "int8"], "--backend all runs every CPU backend and precision, engine only: leave out --precision"),
    (["--device", "cuda"], "leave out --device cuda"),
    (["--frames", "0"], "frames must be >= 1"),
])
def test_bench_all_bad_input(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    assert main(["bench", str(art), "--backend", "all", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_all_needs_a_folder(tiny_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", str(tiny_ckpt), "--backend", "all"]) == 2
    err = capsys.readouterr().err
    assert "is not an artifact folder: --backend all runs a folder's graphs on every CPU backend" in err
    assert err.count("\n") == 1
