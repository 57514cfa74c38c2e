"""The report of `benchmarks/gpu_check.py`: goals, the FPS plot's series and the markdown,
all made from the JSON report alone (so the markdown can always be rebuilt from the JSON)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from gpu_stages import DRY, GPU

from rvos_edge.bench import CPU_FLAGS

FPS_GOALS = (400, 1500)                          # the first preset, fp16, at sizes.batches (1 and 8 on the GPU)
KERNEL_GOALS = {"flex": 1.5, "dense SDPA": 5.0}  # Triton CF-MSA speed-up at the long clip (Tc=36 on the GPU)


def _data(report: dict, name: str) -> dict:
    return next((s.get("data") for s in report["stages"] if s["name"] == name), None) or {}


def fps_chart(report: dict) -> tuple[str, list[str], dict[str, list]]:
    """(title, x labels "B=N", {"model dtype mode": [FPS at each batch]}) from throughput and
    compile, for plot.line_chart; series with no measurement are left out."""
    rows = _data(report, "throughput").get("rows", []) + _data(report, "compile").get("rows", [])
    batches = sorted({r["batch"] for r in rows})
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(f"{r['model']} {r['dtype']} {r['mode']}", [None] * len(batches))[
            batches.index(r["batch"])] = r.get("fps")
    title = f"{report_title(report)}: FPS per batch (Tc={_data(report, 'throughput').get('clip_len')})"
    return title, [f"B={b}" for b in batches], {k: v for k, v in series.items() if any(x is not None for x in v)}


def goals(report: dict) -> list[dict]:
    """The goals (FPS_GOALS, KERNEL_GOALS, every CUDA test passing) against what the report
    measured: {goal, target, measured, met}, met None where nothing was measured."""
    sizes = DRY if report["dry_run"] else GPU
    rows = _data(report, "throughput").get("rows", []) + _data(report, "compile").get("rows", [])
    found = []

    def goal(text: str, target: str, measured: float | None, met: bool | None) -> None:
        found.append({"goal": text, "target": target, "measured": measured, "met": met})

    model, tc = sizes.presets[0], _data(report, "throughput").get("clip_len")
    for batch, target in zip(sizes.batches, FPS_GOALS):
        fps = max((r["fps"] for r in rows if (r["model"], r["dtype"], r["batch"]) == (model, "float16", batch)
                   and r.get("fps")), default=None)
        goal(f"{model} Tc={tc} fp16 B={batch} FPS, best mode", f">= {target}", fps,
             None if fps is None else fps >= target)
    kernel_rows = _data(report, "kernels").get("rows", [])
    for backward in (False, True):
        ms = {r["method"]: r.get("median_ms") for r in kernel_rows
              if (r["op"], r["case"], r["backward"]) == ("CF-MSA", sizes.long_case, backward)}
        for other, target in KERNEL_GOALS.items():
            ratio = ms[other] / ms["triton"] if ms.get(other) and ms.get("triton") else None
            goal(f"Triton CF-MSA speed-up over {other}, {sizes.long_case}, {'fwd+bwd' if backward else 'fwd'}",
                 f">= {target}x", ratio, None if ratio is None else ratio >= target)
    counts = _data(report, "cuda_tests").get("counts")
    bad = None if counts is None else counts["failed"] + counts["error"]
    goal("CUDA tests failed", "0 (and some passed)", bad, None if counts is None else bad == 0 and counts["passed"] > 0)
    return found


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def report_title(report: dict) -> str:
    env = _data(report, "environment")
    name = (env.get("gpu") or {}).get("name") or env.get("cpu_model") or "unknown machine"
    return f"GPU check on {name}" + (" (dry run)" if report["dry_run"] else "")


def _md_environment(d: dict) -> list[str]:
    gpu = d.get("gpu") or {}
    items = [("GPU", f"{gpu['name']}, {gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs, compute "
                     f"{gpu['capability']}, driver {gpu['driver']}" if gpu else "none"),
             ("CUDA (torch)", d.get("cuda")), ("torch", d.get("torch")), ("triton", d.get("triton")),
             ("onnxruntime", d.get("onnxruntime")), ("numpy", d.get("numpy")), ("python", d.get("python")),
             ("CPU", f"{d.get('cpu_model')}, {d.get('usable_cores')} usable of {d.get('cpu_count')} cores, "
                     f"{d.get('memory_gb')} GB"),
             ("CPU flags", " ".join(d.get("cpu_flags") or []) or "none of " + " ".join(CPU_FLAGS)),
             ("platform", d.get("platform"))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in items]


def _md_cuda_tests(d: dict) -> list[str]:
    c = d["counts"]
    lines = [f"`{d['command']}`: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
             f"{c['skipped']} skipped (exit code {d['exit_code']})."]
    bad = [t for t in d["tests"] if t["outcome"] in ("failed", "error")]
    skipped = Counter(t["message"] for t in d["tests"] if t["outcome"] == "skipped")
    if bad:
        lines += ["", "| test | outcome | message |", "|---|---|---|"]
        lines += [f"| {t['test']} | {t['outcome']} | {t['message']} |" for t in bad]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{n} x {m or 'no reason given'}" for m, n in skipped.items())]
    slow = sorted(d["tests"], key=lambda t: -t["seconds"])[:5]
    if slow:
        lines += ["", "Slowest: " + ", ".join(f"{t['test'].split('::')[-1]} {t['seconds']:.1f} s" for t in slow)]
    return lines


def _md_kernels(d: dict) -> list[str]:
    lines = [f"{d['machine']['device']}, {d['dtype']}, shift {d['shift']}, median of {d['reps']} reps after "
             f"{d['warmup']} warm-up (ms; ratio = other method's time / Triton's).", "",
             "| op | case | pass | triton | flex | decomposed | dense SDPA / SDPA | vs flex | vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for op, case, backward in dict.fromkeys((r["op"], r["case"], r["backward"]) for r in d["rows"]):
        cell = {r["method"]: r for r in d["rows"] if (r["op"], r["case"], r["backward"]) == (op, case, backward)}

        def ms(method: str) -> str:
            r = cell.get(method)
            if r is None:
                return "-"
            return _f(r.get("median_ms"), 3) if "median_ms" in r else ("skipped" if "skipped" in r else "error")

        def ratio(method: str) -> str:
            a, b = cell.get(method, {}).get("median_ms"), cell.get("triton", {}).get("median_ms")
            return f"{a / b:.2f}x" if a and b else "-"

        dense = "dense SDPA" if op == "CF-MSA" else "SDPA"
        lines.append(f"| {op} | {case} | {'fwd+bwd' if backward else 'fwd'} | {ms('triton')} | {ms('flex')} | "
                     f"{ms('decomposed')} | {ms(dense)} | {ratio('flex')} | {ratio(dense)} |")
    errors = [f"{r['op']} {r['case']} {r['method']}: {r.get('error') or r.get('skipped')}" for r in d["rows"]
              if "error" in r or "skipped" in r]
    return lines + ([""] + [f"- {e}" for e in errors] if errors else [])


def _md_throughput(d: dict) -> list[str]:
    lines = [f"Tc={d['clip_len']}, random weights, autocast; ms per clip from {d['device']} timers "
             "(CUDA events on the GPU). FPS = frames / summed clip times.", "",
             "| model | dtype | B | mode | FPS | p50 ms | p99 ms | peak GPU MB |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in d["rows"]:
        head = f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['mode']} |"
        if "fps" in r:
            lines.append(f"{head} {_f(r['fps'])} | {_f(r['latency_ms']['p50'], 2)} | {_f(r['latency_ms']['p99'], 2)} "
                         f"| {_f(r['peak_gpu_mb'], 0)} |")
        else:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} | | | |")
    lines += ["", "Text encoder (eager, per call of B expressions):", "",
              "| model | dtype | B | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['dtype']} | {r['batch']} | {_f(r['latency_ms']['p50'], 2)} | "
              f"{_f(r['latency_ms']['p99'], 2)} |" for r in d["text_encoder"]]
    p = d.get("profile")
    if p:
        lines += ["", f"Top kernels of {p['model']} {p['dtype']} B={p['batch']} eager ({p['timer']}, "
                      f"{_f(p['ms_per_clip'], 2)} ms per clip in all, {p['reps']} clips):", "",
                  "| kernel | calls per clip | ms per clip | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{k['name']}` | {_f(k['calls_per_clip'], 0)} | {_f(k['ms_per_clip'], 3)} | "
                  f"{100 * k['share']:.1f}% |" for k in p["top"]]
    return lines


def _md_ort(d: dict) -> list[str]:
    lines = [f"`rvos-edge bench` of the {d['checkpoint']} checkpoint's export (exported in "
             f"{_f(d.get('export_s'))} s), ONNX Runtime fp32, {d['threads']} threads.", "",
             "| model | B | engine FPS | p50 ms | p99 ms | end-to-end FPS | first result ms | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {_f(r['fps'])} | {_f(r['latency_ms']['p50'], 2)} | "
              f"{_f(r['latency_ms']['p99'], 2)} | {_f(r['end_to_end_fps'])} | {_f(r['first_result_ms'], 0)} | "
              f"{_f(r['peak_rss_mb'], 0)} |" for r in d["rows"]]
    return lines


def _md_compile(d: dict) -> list[str]:
    lines = ["| model | dtype | B | compile s | FPS | p50 ms | p99 ms | peak GPU MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        head = f"| {r['model']} | {r['dtype']} | {r['batch']} |"
        lines.append(f"{head} {_f(r.get('compile_s'))} | {_f(r['fps'])} | {_f(r['latency_ms']['p50'], 2)} | "
                     f"{_f(r['latency_ms']['p99'], 2)} | {_f(r['peak_gpu_mb'], 0)} |" if "fps" in r else
                     f"{head} {r.get('status', 'not finished')} | | | | |")
    return [f"Options: {d['options']}.", ""] + lines


def _md_train(d: dict) -> list[str]:
    lines = [f"{d['preset']} preset on {d['device']}.", "", "| stage | steps | s per step | loss first -> last |",
             "|---|---:|---:|---|"]
    for part in ("clip", "rvos"):
        if part in d:
            r = d[part]
            lines.append(f"| {part} | {r['steps']} | {r['s_per_step']:.3f} | {r['loss_first']:.3f} -> "
                         f"{r['loss_last']:.3f} |")
    if "clip" in d:
        lines += ["", f"CLIP held-out accuracy {d['clip']['heldout_accuracy']:.3f}, probes "
                      + ", ".join(f"{k} {v:.3f}" for k, v in d["clip"]["probes"].items())
                      + f", patch-shuffle cosine {d['clip']['patch_shuffle_cosine']:.4f}."]
    if d.get("heldout"):
        h = d["heldout"]
        lines += ["", f"J&F {h['overall']['J&F']:.3f} on {h['data']} ({h['engine']}): "
                      + ", ".join(f"{k} {v['J&F']:.3f}" for k, v in h["by_kind"].items()) + "."]
    if d.get("files"):
        lines += ["", "Written to $OUT: " + ", ".join(f"`{f}`" for f in d["files"]) + "."]
    return lines


RENDER = {"environment": _md_environment, "cuda_tests": _md_cuda_tests, "kernels": _md_kernels,
          "throughput": _md_throughput, "ort_cpu": _md_ort, "compile": _md_compile, "train": _md_train}


def render_markdown(report: dict) -> str:
    """The markdown report, made from the JSON report alone."""
    lines = [f"# {report_title(report)}", ""]
    if report["dry_run"]:
        lines += ["Dry run: tiny shapes on the CPU (Triton in the interpreter). The numbers check that every "
                  "stage works; they measure nothing.", ""]
    lines += [f"Started {report['started']}, budget {report['budget_s']:.0f} s: `{report['command']}`.", "",
              "## Goals", "", "| goal | target | measured | met |", "|---|---:|---:|---|"]
    for g in report["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['target']} | {_f(g['measured'], 2)} | {met} |")
    lines += ["", "## Stages", "", "| stage | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]
    for s in report["stages"]:
        note = s.get("error") or s.get("reason") or ""
        lines.append(f"| {s['name']} | {s['status']} | {_f(s.get('seconds'))} | {s['budget_s']:.0f} | {note} |")
    for s in report["stages"]:
        if s.get("data"):
            lines += ["", f"## {s['title']}", "", *RENDER[s["name"]](s["data"])]
    return "\n".join(lines) + "\n"
