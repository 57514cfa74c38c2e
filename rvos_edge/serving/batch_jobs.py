"""The video list and the index of `rvos-edge batch`, and which videos a run must (re)do. No Ray, no torch.

The list (VIDEOS.jsonl) holds one JSON object per line, blank lines ignored:

    {"video": "clips/cat.mp4", "expr": ["the black cat", "the red ball"]}
    {"video": "clips/cat.mp4", "expr": "the white cat", "id": "cat-white"}

- "video": the file; a relative path is relative to the list's own folder.
- "expr": one expression or a list of them (several share one decode, as in `rvos-edge run`).
- "id" (optional): the video's key, its output folder's name; default the video file's stem.
  Keys are unique in a list, are not hidden names (no leading "."), and hold no "/".
Any other field is refused (a misspelt field would otherwise be silently ignored).

The index (OUT/index.jsonl) has one line per video of the list, in the list's order, each a
JSON object: "key", "line" (its line in the list), "video" (as written) and "path" (absolute),
"expressions", "status" ("done", "error", or "pending": not reached by a run that was
stopped), "error" (null when done), "frames", "warnings" (expression warnings: truncated,
unknown words), "input" (the video's size and mtime_ns when planned), "settings" (artifacts
and their manifest's sha256, backend, precision, device, clip_len), "started" and "finished"
(Unix seconds), "wall_s", "fps" (end_to_end and engine, as in `rvos-edge run`'s summary),
"worker" (host:pid of the actor) and "run" (when the batch run that wrote the entry started,
UTC ISO 8601). Videos that left the list leave the index; their folders stay.

Resume: a video is skipped when its entry says done, its input size and mtime_ns, its
expressions and the settings are the same as now, and OUT/<key>/summary.json exists (the
folder is put in place only once complete, so its presence means the outputs are whole).
Everything else is (re)done, failed videos included (their input may have been fixed).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime.run import SUMMARY_NAME

INDEX_NAME = "index.jsonl"
STAGING_NAME = ".staging"          # OUT/.staging/: videos being written, and folders being replaced
FIELDS = ("video", "expr", "id")
MAX_KEY = 200


@dataclass(frozen=True)
class Job:
    """One video of the list: its line (from 1), key, path as written and absolute, expressions."""

    line: int
    key: str
    video: str
    path: Path
    expressions: tuple[str, ...]

    def task(self) -> dict[str, Any]:
        """What a worker needs to segment it (JSON-ready)."""
        return {"key": self.key, "path": str(self.path), "expressions": list(self.expressions)}


def _key_problem(key: str) -> str | None:
    if not key or key.startswith(".") or "/" in key or "\\" in key or "\0" in key or len(key) > MAX_KEY:
        return (f"the key {key!r} cannot name an output folder (empty, hidden, a path, or over {MAX_KEY} "
                "characters)")
    if key == INDEX_NAME:
        return f"the key {key!r} is the index's name"
    return None


def _expressions(value: Any) -> tuple[str, ...] | None:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        return None
    return tuple(texts)


def _job(line: int, text: str, base: Path) -> Job:
    where = f"line {line}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object like {{\"video\": PATH, \"expr\": [TEXT, ...]}}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    video = row.get("video")
    if not isinstance(video, str) or not video:
        raise UserError(f"{where}: \"video\" must be a file path")
    expressions = _expressions(row.get("expr"))
    if expressions is None:
        raise UserError(f"{where}: \"expr\" must be a non-empty expression or a list of them")
    key = row.get("id", Path(video).stem)
    if not isinstance(key, str):
        raise UserError(f"{where}: \"id\" must be a string")
    problem = _key_problem(key)
    if problem:
        raise UserError(f"{where}: {problem}: give the row an \"id\"")
    path = Path(video) if Path(video).is_absolute() else base / video
    return Job(line, key, video, Path(os.path.abspath(path)), expressions)


def parse_jobs(path: str | os.PathLike[str]) -> list[Job]:
    """The list's jobs in order; a UserError naming the line for a malformed row or a repeated key."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"video list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read video list {path}: {getattr(e, 'strerror', None) or e}") from None
    base = path.resolve().parent
    jobs: list[Job] = []
    lines_of: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            job = _job(number, text, base)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        if job.key in lines_of:
            raise UserError(f"{path}: line {number}: the key {job.key!r} is already line {lines_of[job.key]}'s: "
                            "give one of them an \"id\"")
        lines_of[job.key] = number
        jobs.append(job)
    if not jobs:
        raise UserError(f"video list {path} has no videos")
    return jobs


def input_stamp(path: Path) -> dict[str, int] | None:
    """The video's size and mtime_ns, None when it cannot be read (its worker reports why)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_batch_folder(out: Path) -> None:
    """`out` may hold a batch: absent, empty, or an earlier batch's (it has INDEX_NAME)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output folder {out} exists and is not a folder")
    if (out / INDEX_NAME).is_file():
        return
    if any(entry.name != STAGING_NAME for entry in out.iterdir()):
        raise UserError(f"output folder {out} holds other files (no {INDEX_NAME} of an earlier batch): "
                        "choose another output or empty it")


def read_index(out: Path) -> dict[str, dict[str, Any]]:
    """The entries of OUT/index.jsonl by key ({} without one); a line that does not parse is ignored
    (its video is redone)."""
    try:
        lines = (out / INDEX_NAME).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {out / INDEX_NAME}: {getattr(e, 'strerror', None) or e}") from None
    entries = {}
    for text in lines:
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            entries[entry["key"]] = entry
    return entries


def write_index(out: Path, entries: list[dict[str, Any]]) -> None:
    """Replace OUT/index.jsonl atomically with `entries`, one JSON object a line."""
    atomic_write_bytes(out / INDEX_NAME, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())


def is_finished(entry: dict[str, Any] | None, job: Job, stamp: dict[str, int] | None, settings: dict[str, Any],
                out: Path) -> bool:
    """Whether `job` may be skipped: the module docstring's resume rule."""
    return (entry is not None and entry.get("status") == "done" and stamp is not None
            and entry.get("input") == stamp and entry.get("expressions") == list(job.expressions)
            and entry.get("settings") == settings and (out / job.key / SUMMARY_NAME).is_file())


def plan(jobs: list[Job], previous: dict[str, dict[str, Any]], settings: dict[str, Any], out: Path,
         run: str) -> tuple[list[dict[str, Any]], list[Job]]:
    """The new index (finished videos keep their entries, the others are pending) and the jobs to do."""
    entries, todo = [], []
    for job in jobs:
        stamp = input_stamp(job.path)
        entry = previous.get(job.key)
        if is_finished(entry, job, stamp, settings, out):
            assert entry is not None
            entries.append({**entry, "line": job.line, "video": job.video})
            continue
        entries.append({"key": job.key, "line": job.line, "video": job.video, "path": str(job.path),
                        "expressions": list(job.expressions), "status": "pending", "error": None, "frames": 0,
                        "warnings": [], "input": stamp, "settings": settings, "started": None, "finished": None,
                        "wall_s": None, "fps": None, "worker": None, "run": run})
        todo.append(job)
    return entries, todo
