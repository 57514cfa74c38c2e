"""`rvos-edge batch` (rvos_edge.serving.batch): a list of videos on a local Ray, resumable, an index of
done and failed videos, each video's outputs those of `rvos-edge run`.

Ray starts twice in this file: a local one for the first run, and a one-node cluster (`ray start
--head` on this machine) that the re-run joins with --ray; everything else (the list's errors,
the resume rule, one video's outputs) runs without Ray. Ray's token authentication is on
(RAY_AUTH_MODE=token), as a cluster's would be.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from fake_artifacts import make_fake_artifacts

from rvos_edge.cli import main
from rvos_edge.engines import open_engines
from rvos_edge.fileio import lock_output
from rvos_edge.serving.batch_jobs import INDEX_NAME, STAGING_NAME, parse_jobs, plan, read_index, write_index

REPO = Path(__file__).resolve().parents[1]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'rvos-edge[ray]')")

# key -> (frames, expressions); "corrupt" is a truncated copy of a longer video (decoding stops early).
GOOD = {"walk": (7, ["the white box"]), "pair": (9, ["the white box", "the dark background"]),
        "short": (2, ["the box"]), "long": (13, ["the white box"]), "wide": (5, ["a bright box"])}


def write_video(path: Path, n: int, shift: int = 0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12, (80, 48))
    assert writer.isOpened()
    for t in range(n):
        frame = np.full((48, 80, 3), 10, np.uint8)
        frame[8:40, (3 * t + shift) % 50:(3 * t + shift) % 50 + 30] = (250, 250, 250)
        writer.write(frame)
    writer.release()
    return path


def write_corrupt(path: Path) -> Path:
    """A 30-frame video cut in half: OpenCV opens it, then decoding stops well before the declared count."""
    data = write_video(path, 30).read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch")
    art = make_fake_artifacts(root / "art")
    videos = make_folder_of_videos(root / "videos")
    rows = [{"video": f"videos/{key}.avi", "expr": exprs} for key, (_, exprs) in GOOD.items()]
    rows.insert(2, {"video": "videos/corrupt.avi", "expr": "the white box"})
    rows[-1]["id"] = "wide-id"                            # a key other than the stem
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return {"root": root, "art": art, "videos": videos, "list": root / "videos.jsonl", "out": root / "out"}


def make_folder_of_videos(folder: Path) -> Path:
    folder.mkdir()
    for shift, (key, (n, _)) in enumerate(GOOD.items()):
        write_video(folder / f"{key}.avi", n, shift)
    write_corrupt(folder / "corrupt.avi")
    return folder


RAY_ENV = {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def run_batch(world: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "rvos_edge.cli", "batch", str(world["list"]), "--artifacts",
                           str(world["art"]), "--out", str(world["out"]), "--actors", "2", *extra],
                          capture_output=True, text=True, env={**env, **RAY_ENV}, timeout=300, cwd=world["root"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(world: dict[str, Path]) -> Iterator[str]:
    """The address of a one-node Ray cluster on this machine (`ray start --head`), stopped afterwards."""
    port = free_port()
    log = (world["root"] / "head.log").open("w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
                             "--object-store-memory=200000000", "--disable-usage-stats"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV})
    try:
        deadline = time.monotonic() + 120
        while "will now block" not in (world["root"] / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (world["root"] / "head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGINT)             # `ray start --block` stops its processes on SIGINT
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()


def index_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / INDEX_NAME).read_text().splitlines()]


def folder_state(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file and folder under `out` but the index."""
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.name != INDEX_NAME}


@pytest.fixture(scope="module")
def first(world: dict[str, Path]) -> dict[str, Any]:
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'rvos-edge[ray]')")
    proc = run_batch(world)
    return {"proc": proc, "index": index_lines(world["out"]), "state": folder_state(world["out"])}


@pytest.fixture(scope="module")
def second(world: dict[str, Path], first: dict[str, Any], cluster: str) -> dict[str, Any]:
    """The re-run, on a Ray cluster this time (`--ray ADDRESS`), after a worker was killed mid-video."""
    leftover = world["out"] / STAGING_NAME / "walk-999999-deadbeef"   # what a killed worker leaves
    (leftover / "masks").mkdir(parents=True)
    proc = run_batch(world, "--ray", cluster)
    return {"proc": proc, "index": index_lines(world["out"]), "state": folder_state(world["out"]),
            "leftover": leftover}


@needs_ray
def test_five_done_one_error(world: dict[str, Path], first: dict[str, Any]) -> None:
    proc, index = first["proc"], first["index"]
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("\n") == 1 and "5 done, 1 failed, 0 skipped" in proc.stdout
    assert "2 actor(s) x 1 thread(s), local Ray" in proc.stdout
    assert [e["key"] for e in index] == ["walk", "pair", "corrupt", "short", "long", "wide-id"]
    assert [e["line"] for e in index] == [1, 2, 3, 4, 5, 6]
    by_key = {e["key"]: e for e in index}
    bad = by_key.pop("corrupt")
    assert bad["status"] == "error" and "corrupt.avi" in bad["error"]
    assert f"rvos-edge batch: corrupt: {bad['error']}" in proc.stderr
    expected = {key if key != "wide" else "wide-id": value for key, value in GOOD.items()}
    for key, entry in by_key.items():
        assert entry["status"] == "done" and entry["error"] is None, entry
        assert entry["frames"] == expected[key][0] and entry["expressions"] == expected[key][1]
        assert entry["wall_s"] > 0 and entry["finished"] >= entry["started"]
    assert len({e["worker"] for e in by_key.values()}) >= 1
    out = world["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_NAME, *by_key])   # no folder for the failed one
    assert not [p for p in out.rglob(".*")]                                          # no staging, no temporaries


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_ray
@pytest.mark.parametrize("key", ["walk", "pair", "wide"])
def test_masks_identical_to_run(world: dict[str, Path], first: dict[str, Any], key: str,
                                capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    exprs = [a for text in GOOD[key][1] for a in ("--expr", text)]
    assert main(["run", str(world["art"]), "--video", str(world["videos"] / f"{key}.avi"), *exprs,
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    ran, batched = tree(tmp_path / "run"), tree(world["out"] / ("wide-id" if key == "wide" else key))
    assert sorted(ran) == sorted(batched)                       # same files: masks, overlay.mp4, summary.json
    masks = [name for name in ran if name.startswith("masks/")]
    assert len(masks) == GOOD[key][0] * len(GOOD[key][1])
    assert all(ran[name] == batched[name] for name in masks)
    assert any(cv2.imdecode(np.frombuffer(ran[name], np.uint8), cv2.IMREAD_UNCHANGED).any() for name in masks)


@needs_ray
def test_rerun_skips_the_finished(world: dict[str, Path], first: dict[str, Any], second: dict[str, Any]) -> None:
    proc = second["proc"]
    assert proc.returncode == 1, proc.stderr
    assert "0 done, 1 failed, 5 skipped (done before) of 6 videos" in proc.stdout
    assert "1 actor(s) x 2 thread(s), Ray at 127.0.0.1:" in proc.stdout      # one video left: one actor
    before = {e["key"]: e for e in first["index"]}
    after = {e["key"]: e for e in second["index"]}
    for key in ("walk", "pair", "short", "long", "wide-id"):
        assert after[key] == before[key]                        # same run, same timings: not processed again
    assert after["corrupt"]["status"] == "error" and after["corrupt"]["run"] != before["corrupt"]["run"]
    assert second["state"] == first["state"]                    # no file or folder rewritten
    assert not second["leftover"].exists() and not (world["out"] / STAGING_NAME).exists()


@needs_ray
def test_nothing_to_do_starts_no_ray(world: dict[str, Path], second: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import rvos_edge.serving.batch as batch

    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray started with nothing to do")

    monkeypatch.setattr(batch, "_start_ray", no_ray)
    out = tmp_path / "out"
    shutil.copytree(world["out"], out)
    rows = [line for line in world["list"].read_text().splitlines() if line and "corrupt" not in line]
    listing = world["root"] / "good.jsonl"                       # beside the videos: the same relative paths
    listing.write_text("\n".join(rows) + "\n")
    assert main(["batch", str(listing), "--artifacts", str(world["art"]), "--out", str(out)]) == 0
    assert "0 done, 0 failed, 5 skipped (done before) of 5 videos" in capsys.readouterr().out
    assert [e["key"] for e in index_lines(out)] == ["walk", "pair", "short", "long", "wide-id"]


def test_one_video_outputs_and_errors(world: dict[str, Path], tmp_path: Path) -> None:
    """segment_video, what each actor runs: a good video's folder put in place whole; a corrupt or garbage
    video is an error record, its partial outputs discarded and an older folder of its key removed."""
    from rvos_edge.serving.batch import segment_video
    engines = open_engines(world["art"], "ort", threads=1)
    out = tmp_path / "out"
    (out / STAGING_NAME).mkdir(parents=True)
    good = segment_video(engines, {"key": "walk", "path": str(world["videos"] / "walk.avi"),
                                   "expressions": ["the white box"]}, out, None)
    assert good["status"] == "done" and good["frames"] == 7 and good["error"] is None
    assert len(list((out / "walk" / "masks").iterdir())) == 7
    (out / "corrupt").mkdir()                                    # a stale result of that key
    bad = segment_video(engines, {"key": "corrupt", "path": str(world["videos"] / "corrupt.avi"),
                                  "expressions": ["the white box"]}, out, None)
    assert bad["status"] == "error" and "stopped at frame" in bad["error"] and bad["frames"] > 0
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 64)
    worse = segment_video(engines, {"key": "garbage", "path": str(garbage), "expressions": ["x"]}, out, None)
    assert worse["status"] == "error" and "cannot open video" in worse["error"]
    gone = segment_video(engines, {"key": "gone", "path": str(tmp_path / "gone.mp4"), "expressions": ["x"]}, out, None)
    assert gone["status"] == "error" and "does not exist" in gone["error"]
    assert sorted(p.name for p in out.iterdir()) == [STAGING_NAME, "walk"]
    assert list((out / STAGING_NAME).iterdir()) == []


def test_resume_rule(world: dict[str, Path], tmp_path: Path) -> None:
    """plan(): done + same input, expressions and settings + summary.json present -> skipped; any change -> redone."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b", "c", "d", "e"):
        write_video(videos / f"{name}.avi", 3)
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"video": f"videos/{n}.avi", "expr": ["x"]}) + "\n" for n in "abcde"))
    jobs = parse_jobs(listing)
    out, settings = tmp_path / "out", {"backend": "ort", "precision": "fp32"}
    entries, todo = plan(jobs, {}, settings, out, "run-1")
    assert [j.key for j in todo] == list("abcde") and {e["status"] for e in entries} == {"pending"}
    for e in entries:                                           # as if all had finished
        e["status"] = "done"
        (out / e["key"]).mkdir(parents=True)
        (out / e["key"] / "summary.json").write_text("{}")
    write_index(out, entries)
    previous = read_index(out)
    os.utime(videos / "b.avi", ns=(1, 1))                       # b changed
    (out / "c" / "summary.json").unlink()                       # c's outputs incomplete
    previous["d"]["status"] = "error"                           # d failed
    previous["e"]["expressions"] = ["y"]                        # e had other expressions
    entries, todo = plan(jobs, previous, settings, out, "run-2")
    assert [j.key for j in todo] == ["b", "c", "d", "e"]
    assert entries[0] == previous["a"] and entries[0]["run"] == "run-1"
    assert all(e["status"] == "pending" and e["run"] == "run-2" for e in entries[1:])
    assert [j.key for j in plan(jobs, previous, {**settings, "precision": "int8"}, out, "run-3")[1]] == list("abcde")


@needs_ray
@pytest.mark.parametrize("rows, message", [
    (None, "does not exist"),
    (['{"video": "a.avi", "expr": ["x"]}', "{oops"], "line 2: not JSON"),
    (['{"video": "a.avi", "expression": "x"}'], "line 1: unknown field 'expression'"),
    (['{"video": "a.avi", "expr": []}'], "line 1: \"expr\" must be a non-empty expression"),
    (['{"video": "a.avi", "expr": "x"}', "", '{"video": "b/a.avi", "expr": "y"}'],
     "line 3: the key 'a' is already line 1's"),
    (['{"video": ".hidden.avi", "expr": "x"}'], "line 1: the key '.hidden' cannot name an output folder"),
    ([""], "has no videos"),
])
def test_bad_list(tmp_path: Path, world: dict[str, Path], capsys: pytest.CaptureFixture, rows: list[str] | None,
                  message: str) -> None:
    listing = tmp_path / "videos.jsonl"
    if rows is not None:
        listing.write_text("\n".join(rows) + "\n")
    rc = main(["batch", str(listing), "--artifacts", str(world["art"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("rvos-edge batch: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@needs_ray
def test_bad_artifacts_and_outputs(tmp_path: Path, world: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    listing = tmp_path / "videos.jsonl"
    listing.write_text(json.dumps({"video": str(world["videos"] / "walk.avi"), "expr": "x"}) + "\n")

    def batch(art: Path, out: Path) -> tuple[int, str]:
        rc = main(["batch", str(listing), "--artifacts", str(art), "--out", str(out)])
        return rc, capsys.readouterr().err

    rc, err = batch(tmp_path / "missing", tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "missing is not a folder" in err
    assert main(["batch", str(listing), "--artifacts", str(world["art"]), "--out", str(tmp_path / "out"),
                 "--actors", "0"]) == 2
    assert "--actors must be >= 1, got 0" in capsys.readouterr().err and not (tmp_path / "out").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, err = batch(world["art"], other)
    assert rc == 2 and "holds other files" in err and (other / "notes.txt").read_text() == "mine"
    busy = tmp_path / "busy"
    with lock_output(busy):
        rc, err = batch(world["art"], busy)
    assert rc == 2 and f"in use by process {os.getpid()}" in err and not busy.exists()


def test_missing_ray_is_one_line(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['ray'] = None\nfrom rvos_edge.cli import main\n"
            "sys.exit(main(['batch', 'v.jsonl', '--artifacts', 'art', '--out', 'out']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2
    assert p.stderr == ("rvos-edge batch: error: this command needs the ray extra (not installed: ray): "
                        "pip install 'rvos-edge[ray]'\n")


def test_batch_does_not_import_torch() -> None:
    code = "import sys, rvos_edge.serving.batch\nassert 'torch' not in sys.modules, 'torch imported'"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
