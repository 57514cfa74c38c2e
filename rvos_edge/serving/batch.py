"""`rvos-edge batch VIDEOS.jsonl --artifacts DIR --out OUT`: segment a list of videos on Ray Data.

    rvos-edge batch videos.jsonl --artifacts art/ --out out/                      # a local Ray on this machine
    rvos-edge batch videos.jsonl --artifacts art/ --out /shared/out --ray auto    # the cluster this node is in
    rvos-edge batch videos.jsonl --artifacts art/ --out out/ --actors 2 --threads 1

The list and the index are described in `rvos_edge.serving.batch_jobs`. Output layout:

    OUT/<key>/            exactly what `rvos-edge run DIR --video V --expr E1 [--expr E2 ...] --out OUT/<key>`
                          writes: masks/<frame>.png for one expression, masks/<k>_<slug>/<frame>.png for
                          several (one folder per expression, in the row's order), overlay.mp4 (all of the
                          row's expressions), summary.json
    OUT/index.jsonl       one line per video: status done or error (with the error), frames, timings
    OUT/.staging/         videos being written (removed at the start of the next run)

How it runs. Ray Data turns the rows to do into a dataset of one row per video and maps it
with an actor pool (`ActorPoolStrategy(size=--actors)`, one video per call). Each actor opens
the engines once (`open_engines`, what `Segmenter.open` does) and, for each video, gives every
expression its own Segmenter over them, as `rvos-edge run` does. The actor writes the video's
outputs itself, with `rvos-edge run`'s writer (`rvos_edge.runtime.run.write_outputs`), into
OUT/.staging/<key>-<pid>-<hex>/, and renames the finished folder to OUT/<key> (`fileio.swap_in`);
it returns a small record (status, error, frames, timings). Masks stay where they are made:
sending them back would push every mask through Ray's object store and the driver, which
would then do all the writing. So on a cluster OUT (and the videos, and the artifacts) must be
on a filesystem every node sees at the same path.

The driver holds OUT's lock for the whole run (the lock of `fileio.output_folder`,
``.<OUT>.lock`` beside OUT, held with flock), so a second batch run (or `rvos-edge run`)
into the same OUT is refused, naming the first one's pid. Under the lock it empties
OUT/.staging (what a killed run left), writes the index with every video to do as pending,
then rewrites it (atomically, at most once a second, and at the end) as results come in. A
kill at any point leaves every finished video's folder whole and the index listing it (or
still pending, then it is redone): the next run resumes (see batch_jobs for the rule).

Ray. Without --ray a local Ray of its own starts inside the command (even where `ray start`
left a cluster running on this machine) and stops with it: num_cpus = this
process's cores, an object store of OBJECT_STORE_MB, no dashboard, usage stats off, its node
address 127.0.0.1 (it needs no network; Ray's own gRPC servers still listen on every
interface, behind the token authentication Ray turns on). With --ray ADDRESS ("auto",
"HOST:PORT", "ray://HOST:10001"; the command line's default is $RAY_ADDRESS when set) it
joins that cluster, whose nodes must have this version of rvos-edge installed (a cluster with
Ray's token authentication also wants RAY_AUTH_MODE=token and its token here, as any Ray
driver does). Each actor
runs ONNX Runtime with --threads threads (default: the cluster's CPUs divided by the actors)
and asks Ray for that many CPUs (at most its share of the cluster's), and for one GPU with
--device cuda. Actors are not restarted: a worker process that dies (out
of memory, a crash in native code) stops the run, which then exits 2 after writing the index;
the next run resumes. A video that fails in Python (a corrupt file, a decode error halfway)
is recorded in the index with its error, its partial outputs discarded, and the others go on.

Exit code: 0 when every video is done, 1 when one or more failed (the summary line counts
them and each is one stderr line), 2 for bad input (a missing or malformed list, missing
artifacts, an OUT in use), 130 after Ctrl-C or SIGTERM (the index is written first).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rvos_edge.artifacts.manifest import MANIFEST_NAME, load_manifest
from rvos_edge.engines import Engines, default_device, engine_options, open_engines
from rvos_edge.errors import UserError
from rvos_edge.extras import require
from rvos_edge.fileio import atomic_write_bytes, lock_output, make_folder, sha256_file, swap_in
from rvos_edge.runtime.run import open_segmenters, write_outputs
from rvos_edge.runtime.segmenter import Segmenter
from rvos_edge.runtime.video import open_video
from rvos_edge.serving.batch_jobs import (INDEX_NAME, STAGING_NAME, Job, check_batch_folder, parse_jobs, plan,
                                          read_index, write_index)

OBJECT_STORE_MB = 200          # the local Ray's object store: rows and records are small
INDEX_INTERVAL_S = 1.0         # the index is rewritten at most this often while results come in


@dataclass(frozen=True)
class BatchOptions:
    """What the command was asked for (see `rvos-edge batch --help`)."""

    artifacts: str
    backend: str = "ort"
    precision: str = "fp32"
    device: str | None = None
    clip_len: int | None = None
    actors: int = 1
    threads: int | None = None
    ray_address: str | None = None


def segment_video(engines: Engines, task: dict[str, Any], out: Path, clip_len: int | None) -> dict[str, Any]:
    """Segment one video (`Job.task()`) into OUT/<key> as `rvos-edge run` would; the index record.

    The folder is written under OUT/.staging and put in place only when complete; on an error the
    partial outputs are discarded and an earlier OUT/<key> (stale now) is removed.
    """
    started = time.time()
    staging = out / STAGING_NAME / f"{task['key']}-{os.getpid()}-{secrets.token_hex(4)}"
    record: dict[str, Any] = {"key": task["key"], "started": started, "worker": f"{socket.gethostname()}:{os.getpid()}",
                              "warnings": [], "frames": 0, "fps": None, "error": None}
    try:
        source = open_video(task["path"])
        try:
            segmenters, truncated, record["warnings"] = open_segmenters(partial(Segmenter, engines, clip_len),
                                                                        task["expressions"])
            summary = write_outputs(source, segmenters, task["expressions"], truncated, make_folder(staging),
                                    None, interactive=False)
        finally:
            source.close()
        record.update(frames=summary["frames"], fps=summary["fps"])
        if "error" in summary:
            record["error"] = f"{summary['error']} (after {summary['frames']} frames)"
        else:
            swap_in(staging, out / task["key"], out / STAGING_NAME)
    except UserError as e:
        record["error"] = str(e)
    except Exception as e:                       # one video's bug must not end a batch of thousands
        where = traceback.extract_tb(e.__traceback__)[-1]
        record["error"] = f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if record["error"] is not None:
        shutil.rmtree(out / task["key"], ignore_errors=True)
    finished = time.time()
    record.update(status="error" if record["error"] else "done", finished=finished, wall_s=finished - started)
    return record


class VideoWorker:
    """A Ray Data actor: opens the engines once, then segments one video per row (`segment_video`).

    Rows and results are one JSON string each ("task", "record"), so Arrow never has to infer
    types for nested, optional fields.
    """

    def __init__(self, options: BatchOptions, out: str, threads: int) -> None:
        self.engines = open_engines(options.artifacts, options.backend, options.precision, device=options.device,
                                    threads=threads)
        self.out, self.clip_len = Path(out), options.clip_len

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        return {"record": [json.dumps(segment_video(self.engines, json.loads(str(task)), self.out, self.clip_len))
                           for task in batch["task"]]}


def settings_of(options: BatchOptions) -> dict[str, Any]:
    """What the outputs depend on besides the video and expressions (a change redoes every video)."""
    folder = Path(options.artifacts)
    return {"artifacts": str(folder.resolve()), "manifest_sha256": sha256_file(folder / MANIFEST_NAME),
            "backend": options.backend, "precision": options.precision,
            "device": options.device or default_device(options.backend), "clip_len": options.clip_len}


def _check_options(options: BatchOptions) -> None:
    """Bad flags and artifacts are one line before Ray starts (the actors would fail one by one)."""
    if options.actors < 1:
        raise UserError(f"--actors must be >= 1, got {options.actors}")
    if options.threads is not None and options.threads < 1:
        raise UserError(f"--threads must be >= 1, got {options.threads}")
    if options.clip_len is not None and options.clip_len < 1:
        raise UserError(f"--clip-len must be >= 1, got {options.clip_len}")
    engine_options(options.backend, options.device)
    load_manifest(options.artifacts)               # a folder from `rvos-edge export`, files matching their sha256


def _start_ray(address: str | None) -> Any:
    """ray, initialised: the cluster at `address`, or a small local one (module docstring)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data

    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            # Workers are started by this machine's raylet: they must import this process's rvos_edge.
            package_root = str(Path(__file__).resolve().parents[2])
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            # address "local": a new cluster of our own, even where `ray start` left one running here.
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)),
                     object_store_memory=OBJECT_STORE_MB * 2**20, _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UserError(f"cannot start {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if threading.current_thread() is threading.main_thread() and sigterm is not None:
        # ray.init puts its own crash handler on SIGTERM (a stack dump, then death): give it back to
        # the command, for which SIGTERM is Ctrl-C, so a stopped run still writes its index.
        signal.signal(signal.SIGTERM, sigterm)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False         # the command's own bar counts videos
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def _actor_resources(ray: Any, actors: int, threads: int | None, device: str) -> tuple[int, dict[str, float]]:
    """ONNX Runtime threads per actor and the resources each asks Ray for (module docstring)."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    share = max(cpus / actors, 0.01)
    threads = threads or max(1, int(share))
    resources = {"num_cpus": min(float(threads), share)}
    if device.startswith("cuda"):
        resources["num_gpus"] = 1.0
    return threads, resources


def _dataset(ray: Any, todo: list[Job], options: BatchOptions, out: Path) -> tuple[Any, int]:
    """The Ray dataset of `todo` mapped by a pool of VideoWorker actors (one record per job, in the
    order they finish), and the threads each actor runs."""
    actors = min(options.actors, len(todo))
    threads, resources = _actor_resources(ray, actors, options.threads,
                                          options.device or default_device(options.backend))
    rows = [{"task": json.dumps(job.task())} for job in todo]
    with warnings.catch_warnings():
        # Ray Data restarts a dead actor and retries its task forever by default, so a video that
        # crashes the process would never end the run; max_restarts=0 turns that off. Ray 2.60 warns
        # that such core options will move elsewhere; they are still the only way to set it.
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            VideoWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"options": options, "out": str(out), "threads": threads},
            max_restarts=0, **resources)
    return dataset, threads


def _clear_staging(out: Path) -> None:
    """Remove what runs that ended (killed) left in OUT/.staging; we hold OUT's lock, so nothing else writes there."""
    shutil.rmtree(out / STAGING_NAME, ignore_errors=True)
    make_folder(out / STAGING_NAME)


def run_batch(videos: str, out: str, options: BatchOptions, json_path: str | None = None) -> int:
    """The `batch` command (module docstring); returns the exit code."""
    require("ray", "this command")
    t_start = time.perf_counter()
    run = datetime.now(timezone.utc).isoformat(timespec="seconds")
    jobs = parse_jobs(videos)
    _check_options(options)
    out_dir = Path(out)
    make_folder(out_dir.parent)
    with lock_output(out_dir):
        check_batch_folder(out_dir)
        settings = settings_of(options)
        entries, todo = plan(jobs, read_index(out_dir), settings, out_dir, run)
        make_folder(out_dir)
        _clear_staging(out_dir)
        write_index(out_dir, entries)
        stats = _process(todo, entries, options, out_dir) if todo else {"threads": None, "process_s": 0.0,
                                                                        "ray_start_s": 0.0}
    summary = _summary(entries, todo, options, out_dir, run, stats, time.perf_counter() - t_start)
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    failed, done_now = summary["failed"], summary["done"]
    per_actor = f"{summary['actors']} actor(s) x {stats['threads']} thread(s)" if todo else "nothing to do"
    print(f"rvos-edge batch: {done_now} done, {failed} failed, {summary['skipped']} skipped (done before) of "
          f"{len(jobs)} videos; {summary['frames']} frames in {summary['process_s']:.1f} s "
          f"({summary['videos_per_s']:.2f} videos/s, {summary['frames_per_s']:.1f} frames/s), {per_actor}, "
          f"{summary['ray']} -> {out_dir / INDEX_NAME}")
    return 1 if failed else 0


def _process(todo: list[Job], entries: list[dict[str, Any]], options: BatchOptions, out: Path) -> dict[str, Any]:
    """Run `todo` on Ray, updating `entries` and the index as records come in; timings and threads."""
    by_key = {e["key"]: e for e in entries}
    t0 = time.perf_counter()
    ray = _start_ray(options.ray_address)
    try:
        stats: dict[str, Any] = {"ray_start_s": time.perf_counter() - t0}
        t1 = time.perf_counter()
        dataset, stats["threads"] = _dataset(ray, todo, options, out)
        written = time.monotonic()
        with tqdm(total=len(todo), unit="video", desc="batch", disable=None, file=sys.stderr) as bar:
            for row in dataset.iter_rows():
                record = json.loads(row["record"])
                by_key[record["key"]].update(record)
                if record["error"]:
                    tqdm.write(f"rvos-edge batch: {record['key']}: {record['error']}", file=sys.stderr)
                bar.update()
                if time.monotonic() - written >= INDEX_INTERVAL_S:
                    write_index(out, entries)
                    written = time.monotonic()
        stats["process_s"] = time.perf_counter() - t1
    except ray.exceptions.RayError as e:
        raise UserError(f"the Ray job stopped: {str(e).strip().splitlines()[0]}; finished videos are kept, "
                        "re-run to resume") from None
    finally:
        write_index(out, entries)
        ray.shutdown()
        with contextlib.suppress(OSError):
            (out / STAGING_NAME).rmdir()           # empty unless a worker could not clean up
    return stats


def _summary(entries: list[dict[str, Any]], todo: list[Job], options: BatchOptions, out: Path, run: str,
             stats: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The --json summary: counts, frames and rates of this run's videos (skipped ones excluded)."""
    keys = {job.key for job in todo}
    now = [e for e in entries if e["key"] in keys]
    frames = sum(e["frames"] for e in now if e["status"] == "done")
    done = sum(e["status"] == "done" for e in now)
    process_s = stats["process_s"]
    return {"run": run, "videos": len(entries), "done": done, "failed": sum(e["status"] == "error" for e in now),
            "skipped": len(entries) - len(now), "frames": frames, "actors": min(options.actors, len(todo)),
            "threads_per_actor": stats["threads"], "ray": f"Ray at {options.ray_address}" if options.ray_address
            else "local Ray", "ray_start_s": stats["ray_start_s"], "process_s": process_s, "wall_s": wall_s,
            "videos_per_s": done / process_s if process_s > 0 else 0.0,
            "frames_per_s": frames / process_s if process_s > 0 else 0.0,
            "index": str(out / INDEX_NAME)}
