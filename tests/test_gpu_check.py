"""`make gpu-check` (benchmarks/gpu_check.py): the dry run of every stage, budgets, time-outs,
and the report's goals and markdown, on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_report import goals, render_markdown  # noqa: E402
from gpu_stages import DRY, parse_junit  # noqa: E402

FILES = ("gpu_check.json", "gpu_check.md", "gpu_check.png", "gpu_check.log")


def test_dry_run_runs_every_stage_and_writes_the_documented_report(tmp_path: Path) -> None:
    out, mirror = tmp_path / "results", tmp_path / "OUT"
    env = dict(os.environ, OUT=str(mirror), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["schema"] == "rvos-edge-gpu-check/1" and report["dry_run"] is True
    assert [s["name"] for s in report["stages"]] == [s.name for s in gpu_check.STAGES]
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {**{s.name: "ok" for s in gpu_check.STAGES if not s.optional}, "train": "skipped"}
    data = {s["name"]: s.get("data") for s in report["stages"]}

    assert {"gpu", "cuda", "torch", "triton", "onnxruntime", "cpu_model", "cpu_flags", "usable_cores"} <= set(
        data["environment"])
    counts = data["cuda_tests"]["counts"]
    assert counts["skipped"] == len(data["cuda_tests"]["tests"]) > 30 and counts["failed"] == counts["error"] == 0
    kernel_methods = {(r["op"], r["method"]) for r in data["kernels"]["rows"] if "median_ms" in r}
    assert {("CF-MSA", "triton"), ("CF-MSA", "decomposed"), ("CF-MSA", "dense SDPA"), ("PRTC", "triton")} \
        <= kernel_methods                           # Triton in the interpreter
    rows = data["throughput"]["rows"]
    assert [(r["dtype"], r["batch"], r["mode"]) for r in rows] == [
        (d, b, m) for d in DRY.dtypes for b in DRY.batches for m in ("eager", "cuda-graph")]
    assert all(r["fps"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] for r in rows if r["mode"] == "eager")
    assert all(r["skipped"] == "needs CUDA" for r in rows if r["mode"] == "cuda-graph")
    assert len(data["throughput"]["text_encoder"]) == len(DRY.dtypes) * len(DRY.batches)
    top = data["throughput"]["profile"]["top"]
    assert top and abs(sum(k["share"] for k in top) - 1) < 0.5 and top[0]["ms_per_clip"] >= top[-1]["ms_per_clip"]
    assert [r["batch"] for r in data["ort_cpu"]["rows"]] == list(DRY.batches) and data["ort_cpu"]["export_s"] > 0
    assert all(r["fps"] > 0 and r["compile_s"] > 0 for r in data["compile"]["rows"])

    assert report["goals"] == goals(report)
    assert (out / "gpu_check.md").read_text() == render_markdown(report)
    assert cv2.imread(str(out / "gpu_check.png")) is not None
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {s.name} " in log for s in gpu_check.STAGES if not s.optional)
    for name in FILES:                               # $OUT holds the same report (the device's return folder)
        assert (mirror / name).read_bytes() == (out / name).read_bytes()


def test_stages_that_do_not_fit_the_budget_are_skipped(tmp_path: Path) -> None:
    report = gpu_check.run_all(budget=5, dry_run=True, train=True, out=tmp_path / "r")
    reasons = [s.get("reason") for s in report["stages"]]
    assert [s["status"] for s in report["stages"]] == ["skipped"] * len(gpu_check.STAGES)
    assert reasons[0] == "needs 10 s, 5 s of the budget left"
    assert json.loads((tmp_path / "r" / "gpu_check.json").read_text())["stages"] == report["stages"]


def test_a_stage_past_its_time_is_killed_and_the_next_one_runs(tmp_path: Path, monkeypatch) -> None:
    """ort_cpu (budget 2 s) may use the slack but for the next stage's 10 s and the margin: about
    3 s of 18, too little for its ONNX export alone; it is killed, recorded, and the next stage runs."""
    stages = (gpu_check.Stage("ort_cpu", "ONNX Runtime", 2), gpu_check.Stage("environment", "Environment", 10))
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the child's --result is under tmp_path: ours alone
    report = gpu_check.run_all(budget=10 + gpu_check.MARGIN_S + 3, dry_run=True, train=False, out=tmp_path / "r")
    slow, env = report["stages"]
    assert slow["status"] == "timed out" and 2.5 < slow["timeout_s"] <= 3.0
    assert slow["seconds"] < slow["timeout_s"] + 5 and slow["error"].startswith("killed after 3 s")
    assert env["status"] == "ok" and env["data"]["torch"]
    alive = subprocess.run(["pgrep", "-f", f"--stage ort_cpu --result {tmp_path}"], capture_output=True, text=True)
    assert alive.stdout.strip() == ""


def test_junit_outcomes(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
<testcase classname="tests.a" name="ok" time="0.5"/>
<testcase classname="tests.a" name="bad" time="1.25"><failure message="assert 1 == 2&#10;more">trace</failure></testcase>
<testcase classname="tests.b" name="boom" time="0"><error message="fixture failed">trace</error></testcase>
<testcase classname="tests.b" name="later" time="0"><skipped message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>""")
    assert parse_junit(xml) == [
        {"test": "tests.a::ok", "outcome": "passed", "seconds": 0.5, "message": ""},
        {"test": "tests.a::bad", "outcome": "failed", "seconds": 1.25, "message": "assert 1 == 2"},
        {"test": "tests.b::boom", "outcome": "error", "seconds": 0.0, "message": "fixture failed"},
        {"test": "tests.b::later", "outcome": "skipped", "seconds": 0.0, "message": "needs a CUDA GPU"}]


def test_goals_from_a_hand_made_report() -> None:
    def stage(name: str, data: dict) -> dict:
        return {"name": name, "title": name, "budget_s": 1, "status": "ok", "data": data}

    fps = [("eager", 1, 350.0), ("cuda-graph", 1, 420.0), ("eager", 8, 1400.0), ("cuda-graph", 8, 1450.0)]
    kernel = [(False, "triton", 2.0), (False, "flex", 4.0), (False, "dense SDPA", 8.0),
              (True, "triton", 6.0), (True, "flex", 6.0), (True, "dense SDPA", 60.0)]
    report = {"dry_run": False, "stages": [
        stage("throughput", {"clip_len": 6, "rows": [
            {"model": "vit-b16", "dtype": "float16", "batch": b, "mode": m, "fps": f} for m, b, f in fps] + [
            {"model": "vit-b16", "dtype": "bfloat16", "batch": 8, "mode": "eager", "fps": 9999.0}]}),
        stage("kernels", {"rows": [{"op": "CF-MSA", "case": "vit-b16 Tc=36", "backward": bw, "method": m,
                                    "median_ms": ms} for bw, m, ms in kernel]}),
        stage("cuda_tests", {"counts": {"passed": 10, "failed": 1, "error": 0, "skipped": 2}})]}
    assert [(g["measured"], g["met"]) for g in goals(report)] == [
        (420.0, True), (1450.0, False),               # the best fp16 mode; bf16 does not count
        (2.0, True), (4.0, False), (1.0, False), (10.0, True),
        (1, False)]
    report["stages"] = report["stages"][:1]
    assert [g["met"] for g in goals(report)][2:] == [None] * 5


def test_bad_budget_is_one_line() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--budget", "0"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 2 and done.stderr == "gpu-check: --budget must be > 0 seconds, got 0\n"


def test_dry_run_train_stage_writes_the_checkpoint_and_its_summary_to_out(tmp_path, monkeypatch) -> None:
    """The whole recipe on the tiny preset, CLIP then VLP-RVOS, each leg stopped by the clock."""
    import time

    from gpu_stages import CLIP_SHARE, DEADLINE_ENV, TRAIN_CHECKPOINT, TRAIN_SUMMARY, stage_train

    from rvos_edge.model import load_checkpoint

    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv(DEADLINE_ENV, repr(time.time() + 300))
    saved: list[dict] = []
    data = stage_train(DRY, saved.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TRAIN_CHECKPOINT, TRAIN_SUMMARY])
    assert json.loads((tmp_path / TRAIN_SUMMARY).read_text()) == json.loads(json.dumps(data, default=str))
    assert saved and saved[-1] is data and data["training_seconds"] == DRY.train_seconds
    clip, rvos = data["clip"], data["rvos"]
    assert clip["steps"] >= 1 and rvos["steps"] >= 1
    assert clip["options"]["time_budget"] == pytest.approx(DRY.train_seconds * CLIP_SHARE)
    assert clip["options"]["region_weight"] > 0 and clip["options"]["workers"] == min(DRY.train_workers,
                                                                                     (os.cpu_count() or 1) - 1)
    assert clip["seconds"] < DRY.train_seconds * CLIP_SHARE + 5 and rvos["seconds"] < DRY.train_seconds + 5
    assert all(c["step"] % DRY.train_probe_every == 0 for c in clip["probe_curve"])
    assert set(clip["probes"]) >= {"shape", "colour", "place", "per_patch"}
    assert load_checkpoint(tmp_path / TRAIN_CHECKPOINT).config.name == DRY.train_preset
    assert data["heldout"]["overall"]["expressions"] == DRY.train_eval_videos


def test_training_time_fits_the_stage_deadline_and_big_checkpoints_come_back_in_pieces(tmp_path, monkeypatch) -> None:
    import time

    from gpu_stages import DEADLINE_ENV, GPU, TRAIN_CHECKPOINT, return_files, training_seconds

    from rvos_edge.model import build_model, save_checkpoint

    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    assert training_seconds(GPU) == GPU.train_seconds
    monkeypatch.setenv(DEADLINE_ENV, repr(time.time() + GPU.train_reserve_s + 100))
    assert 98 < training_seconds(GPU) <= 100                         # what the deadline leaves after the reserve
    monkeypatch.setenv(DEADLINE_ENV, repr(time.time() + 1000))
    assert training_seconds(GPU) == GPU.train_seconds

    packed = tmp_path / "packed.safetensors.gz"
    save_checkpoint(build_model("tiny", seed=0), packed)
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir(), big.mkdir()
    assert return_files(packed, small) == [TRAIN_CHECKPOINT]
    limit = packed.stat().st_size // 2 + 1
    assert return_files(packed, big, limit) == [f"{TRAIN_CHECKPOINT}.part1", f"{TRAIN_CHECKPOINT}.part2"]
    parts = [(big / f"{TRAIN_CHECKPOINT}.part{i}").read_bytes() for i in (1, 2)]
    assert len(parts[0]) == limit and parts[0] + parts[1] == packed.read_bytes() == (small / TRAIN_CHECKPOINT).read_bytes()
