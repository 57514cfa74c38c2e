"""`rvos-edge serve` and RemoteSegmenter: a real PyTriton server on 127.0.0.1, started and stopped by the
tests, gives every stream the masks a local Segmenter gives for the same frames (rvos_edge.serving).

The model is a random-weight tiny export (its history changes the masks, so history leaking from
one stream into another would show). Every expectation is a local Segmenter's results.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import export_tiny
from fake_artifacts import make_fake_artifacts

pytest.importorskip("pytriton", reason="rvos-edge serve needs the serve extra (nvidia-pytriton, Linux)")
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from rvos_edge.cli import main  # noqa: E402
from rvos_edge.engines import Runner, open_engines  # noqa: E402
from rvos_edge.errors import UserError  # noqa: E402
from rvos_edge.runtime.segmenter import ExpressionTruncatedWarning, Segmenter, SegmentResult  # noqa: E402
from rvos_edge.serving import RemoteError, RemoteSegmenter  # noqa: E402
from rvos_edge.serving.load import check, drive, server_process  # noqa: E402
from rvos_edge.serving.protocol import NO_FRAMES, Call, Limits, encode_call  # noqa: E402
from rvos_edge.serving.server import prepare_python  # noqa: E402
from rvos_edge.serving.streams import StreamTable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 64)                                # H, W of the test frames (the tiny model takes 64 x 64)
EXPRESSIONS = ["the red cup", "a small dog", "the box on the left"]
MAX_STREAMS = 10


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory, tiny_export: Path) -> Path:
    return export_tiny(tmp_path_factory.mktemp("serve"), tiny_export)


@pytest.fixture(scope="module")
def engines(art: Path):
    return open_engines(art, "ort", "fp32", threads=1)


@pytest.fixture(scope="module")
def server(art: Path):
    with server_process(art, "--max-streams", str(MAX_STREAMS), "--threads", "1", "--queue-delay", "2") as s:
        yield s
    assert any(line.startswith("rvos-edge serve: stopped;") for line in s.lines), s.lines[-5:]


def video(seed: int, frames: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, *size, 3), dtype=np.uint8)


def local_run(engines, expression: str, frames: np.ndarray, reset_at: int | None = None) -> list[SegmentResult]:
    """A local Segmenter's results for `frames` (reset after frame `reset_at`, pending frames dropped)."""
    seg = Segmenter(engines)
    seg.set_expression(expression)
    out = []
    for k, frame in enumerate(frames):
        if k == reset_at:
            seg.reset()
        out += seg.push(frame)
    return out + seg.flush()


def assert_same(got: list[SegmentResult], want: list[SegmentResult]) -> None:
    assert [r.index for r in got] == [r.index for r in want]
    for g, w in zip(got, want):
        assert g.score == w.score and g.mask.shape == w.mask.shape and np.array_equal(g.mask, w.mask), g.index


# ---- the stream table on its own (no server): batching, order, limits -------------------------------------

def test_batched_clips_equal_each_streams_own(engines) -> None:
    vids = [video(s, 8) for s in range(3)]
    table = StreamTable(engines, Limits())
    table.handle([Call(str(s), "set_expression", e, NO_FRAMES) for s, e in enumerate(EXPRESSIONS)])
    got: list[list[SegmentResult]] = [[], [], []]
    for k in (0, 4):                                     # 4 frames per call: clips complete at frames 3 and 6
        replies = table.handle([Call(str(s), "push", "", vids[s][k:k + 4]) for s in range(3)])
        for s, r in enumerate(replies):
            assert r.error is None and r.status["batch"] == 3   # the 3 streams' clips ran as one batch
            got[s] += r.results
    for s, r in enumerate(table.handle([Call(str(s), "flush", "", NO_FRAMES) for s in range(3)])):
        got[s] += r.results
    assert table.stats.max_batch == 3 and table.stats.clips == 9 and table.stats.engine_calls == 3
    for s in range(3):
        assert_same(got[s], local_run(engines, EXPRESSIONS[s], vids[s]))


def test_calls_of_one_stream_in_one_batch_run_in_order(engines) -> None:
    frames = video(7, 5)
    table = StreamTable(engines, Limits())
    replies = table.handle([Call("a", "set_expression", "a dog", NO_FRAMES), Call("a", "push", "", frames[:2]),
                            Call("a", "push", "", frames[2:]), Call("a", "flush", "", NO_FRAMES),
                            Call("a", "close", "", NO_FRAMES), Call("a", "push", "", frames[:1])])
    assert [len(r.results) for r in replies[:5]] == [0, 0, 3, 2, 0]
    assert_same(replies[2].results + replies[3].results, local_run(engines, "a dog", frames))
    assert "unknown stream 'a'" in replies[5].error and "a" not in table


def test_refusals_change_nothing(engines) -> None:
    table = StreamTable(engines, Limits(max_streams=1, max_request_mb=0.01))
    table.handle([Call("a", "set_expression", "a dog", NO_FRAMES), Call("a", "push", "", video(1, 1))])
    bad = {"unknown op 'jump'": Call("a", "jump", "", NO_FRAMES),
           "flush takes no frames": Call("a", "flush", "", video(1, 1)),
           "a stream id is 1..128 bytes": Call("", "flush", "", NO_FRAMES),
           "frames must be uint8 [N, H, W, 3]": Call("a", "push", "", video(1, 1)[..., :2]),
           "push needs N >= 1 frames": Call("a", "push", "", NO_FRAMES),
           "at most 0.01 MiB per call": Call("a", "push", "", video(1, 2, (64, 64))),
           "flush first to change size": Call("a", "push", "", video(1, 1, (32, 32))),
           "maximum of 1 streams": Call("b", "set_expression", "a cat", NO_FRAMES),
           "the expression is empty": Call("a", "set_expression", " ", NO_FRAMES)}
    replies = table.handle(list(bad.values()))
    for (fragment, _), reply in zip(bad.items(), replies):
        assert reply.error is not None and fragment in reply.error and "\n" not in reply.error, reply.error
    assert len(table) == 1 and table.stats.errors == len(bad)
    (reply,) = table.handle([Call("a", "push", "", video(1, 2)[1:])])
    assert reply.status["pending"] == 2                  # the refused pushes added no frame


def test_idle_streams_are_evicted_at_the_next_call(engines) -> None:
    now = [0.0]
    table = StreamTable(engines, Limits(idle_timeout_s=10.0), clock=lambda: now[0])
    table.handle([Call("a", "set_expression", "a dog", NO_FRAMES), Call("b", "set_expression", "a cat", NO_FRAMES)])
    now[0] = 8.0
    table.handle([Call("b", "push", "", video(1, 1))])
    now[0] = 12.0                                        # a: 12 s idle, b: 4 s
    (reply,) = table.handle([Call("a", "flush", "", NO_FRAMES)])
    assert "unknown stream 'a'" in reply.error and "evicted after 10 s idle" in reply.error
    assert "b" in table and table.stats.evicted == 1


# ---- a real server -----------------------------------------------------------------------------------------

def test_three_streams_interleaved_four_frames_at_a_time(server, engines) -> None:
    vids = [video(10 + s, 26) for s in range(3)]
    segs = [RemoteSegmenter(server.url, f"interleaved-{s}") for s in range(3)]
    got: list[list[SegmentResult]] = [[], [], []]
    for seg, text in zip(segs, EXPRESSIONS):
        assert seg.set_expression(text) == [] and seg.clip_len == 3
    for k in range(0, 26, 4):
        for s, seg in enumerate(segs):
            got[s] += seg.push_many(vids[s][k:k + 4])
    for s, seg in enumerate(segs):
        got[s] += seg.flush()
        seg.close()
    want = [local_run(engines, EXPRESSIONS[s], vids[s]) for s in range(3)]
    for s in range(3):
        assert_same(got[s], want[s])
    # The check can fail: with another stream's history in front of it, a stream's masks change.
    carried = local_run(engines, EXPRESSIONS[1], np.concatenate([vids[0][:3], vids[1]]))[3:]
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(carried, want[1]))


def test_a_stream_reset_mid_video(server, engines) -> None:
    frames = video(20, 20)
    with RemoteSegmenter(server.url, "reset") as seg:
        seg.set_expression("the red cup")
        got = seg.push_many(frames[:8])                  # 2 clips, frames 6 and 7 pending
        seg.reset()                                       # drops them; history and index start again
        got += seg.push_many(frames[8:]) + seg.flush()
    want = local_run(engines, "the red cup", frames, reset_at=8)
    assert_same(got, want)
    assert [r.index for r in got] == list(range(6)) + list(range(12))


def test_expression_warnings_reach_the_client(server) -> None:
    with RemoteSegmenter(server.url, "warn") as seg, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg.set_expression("the cup " * 60)
    assert [w.category for w in caught] == [ExpressionTruncatedWarning]


def _raw_push(url: str, stream: str, frames: np.ndarray) -> None:
    """A push sent with tritonclient directly, frames of any dtype and shape (RemoteSegmenter refuses them)."""
    client = grpcclient.InferenceServerClient(url)
    arrays = encode_call(Call(stream, "push", "", np.zeros((1, 1, 1, 3), np.uint8)))
    arrays["frames"] = frames
    inputs = []
    for name, a in arrays.items():
        inputs.append(grpcclient.InferInput(name, list(a.shape), "BYTES" if a.dtype.kind == "S" else
                                            {"uint8": "UINT8", "float32": "FP32"}[a.dtype.name]))
        inputs[-1].set_data_from_numpy(a)
    try:
        client.infer("rvos", inputs)
    finally:
        client.close()


def test_bad_requests_are_answered_and_the_other_streams_keep_serving(server, engines) -> None:
    frames = video(30, 24)
    good = RemoteSegmenter(server.url, "good")
    good.set_expression("a small dog")
    got = good.push_many(frames[:4])
    with pytest.raises(InferenceServerException, match="FP32"):                     # wrong dtype
        _raw_push(server.url, "good", np.zeros((1, 2, *SIZE, 3), np.float32))
    got += good.push_many(frames[4:8])
    with pytest.raises(InferenceServerException, match="frames"):                   # wrong shape: 4 channels
        _raw_push(server.url, "good", np.zeros((1, 2, *SIZE, 4), np.uint8))
    got += good.push_many(frames[8:12])
    big = RemoteSegmenter(server.url, "big")
    big.set_expression("the ball")
    t0 = time.perf_counter()
    frame = np.zeros((5000, 6667, 3), np.uint8)                                    # a 100 MB frame
    assert frame.nbytes >= 100_000_000
    with pytest.raises(RemoteError, match=r"frames are 95\.4 MiB, the server takes at most 64 MiB per call"):
        big.push(frame)
    assert time.perf_counter() - t0 < 60
    big.close()
    got += good.push_many(frames[12:16])
    opened = [RemoteSegmenter(server.url, f"fill-{k}") for k in range(MAX_STREAMS - 1)]   # + "good" = the maximum
    for seg in opened:
        seg.set_expression("a cat")
    with pytest.raises(RemoteError, match=f"maximum of {MAX_STREAMS} streams"):       # too many streams
        RemoteSegmenter(server.url, "one-too-many").set_expression("a cat")
    got += good.push_many(frames[16:20])
    for seg in opened:
        seg.close()
    with pytest.raises(RemoteError, match="flush refused: unknown stream 'never-opened'"):
        RemoteSegmenter(server.url, "never-opened").flush()
    got += good.push_many(frames[20:]) + good.flush()
    good.close()
    assert_same(got, local_run(engines, "a small dog", frames))


def test_load_8_streams_of_300_frames(server, engines) -> None:
    vids = [video(100 + s, 300) for s in range(8)]
    expressions = [EXPRESSIONS[s % 3] for s in range(8)]
    runs, wall_s = drive(server.url, vids, expressions, frames_per_call=3)
    assert [r.error for r in runs] == [None] * 8
    result = check(runs, [local_run(engines, e, v) for e, v in zip(expressions, vids)])
    assert (result.frames, result.lost, result.duplicated, result.misrouted) == (2400, 0, 0, 0)
    assert max(b for r in runs for b in r.batches) > 1           # clips of different streams shared engine calls
    # The check can fail: a frame routed to another stream comes back with that stream's mask.
    assert not np.array_equal(runs[0].results[0].mask, runs[1].results[0].mask)


def test_run_with_server_writes_what_run_writes(server, art: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(video(40, 11)):
        cv2.imwrite(str(folder / f"{k:03d}.png"), frame)
    common = ["--frames", str(folder), "--expr", "the red cup", "--expr", "a small dog"]
    assert main(["run", str(art), "--threads", "1", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["run", "--server", f"grpc://{server.url}", *common, "--out", str(tmp_path / "remote")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("rvos-edge run: 11 frames x 2 expression(s)") and "ort fp32" in out[-1]
    local_masks = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "masks").rglob("*.png"))
    assert len(local_masks) == 22
    for rel in local_masks:
        assert (tmp_path / "remote" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["server"] == f"grpc://{server.url}" and summary["clip_len"] == 3 and summary["frames"] == 11


# ---- idle eviction on a real server ------------------------------------------------------------------------

def test_idle_streams_are_evicted(art: Path) -> None:
    with server_process(art, "--idle-timeout", "1", "--max-streams", "2", "--threads", "1") as s:
        a, b = RemoteSegmenter(s.url, "a"), RemoteSegmenter(s.url, "b")
        a.set_expression("a dog")
        b.set_expression("a cat")
        with pytest.raises(RemoteError, match="maximum of 2 streams"):
            RemoteSegmenter(s.url, "c").set_expression("a bird")
        time.sleep(1.5)
        c = RemoteSegmenter(s.url, "c")
        c.set_expression("a bird")                            # a and b were evicted first
        assert c.last_status["streams"] == 1
        with pytest.raises(RemoteError, match="unknown stream 'a'.*evicted after 1 s idle"):
            a.push(video(1, 1)[0])
        assert a.set_expression("a dog") == [] and a.push(video(1, 1)[0]) == []    # it starts afresh
    stopped = [line for line in s.lines if line.startswith("rvos-edge serve: stopped;")]
    assert stopped and int(re.search(r"(\d+) idle streams evicted", stopped[0]).group(1)) >= 2, s.lines[-3:]


# ---- the command line: one line and exit 2 ------------------------------------------------------------------

def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_serve_refuses_bad_flags_and_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = make_fake_artifacts(tmp_path / "art")
    for flags, fragment in ((["--max-streams", "0"], "--max-streams must be >= 1"),
                            (["--idle-timeout", "0"], "--idle-timeout must be > 0"),
                            (["--port", "70000"], "--port must be <= 65535")):
        rc, err = _cli(capsys, "serve", str(fake), *flags)
        assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc, err = _cli(capsys, "serve", str(fake), "--port", str(busy.getsockname()[1]))
    assert rc == 2 and err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err, err


def test_run_server_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = make_fake_artifacts(tmp_path / "art")
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), video(1, 1)[0])
    common = ["--frames", str(folder), "--expr", "a dog", "--out", str(tmp_path / "out")]
    cases = {("run", str(fake), "--server", "127.0.0.1:1", *common): "--server runs the server's model: drop DIR|CKPT",
             ("run", "--server", "http://127.0.0.1:1", *common): "must be grpc://HOST:PORT",
             ("run", *common): "give an artifact folder or checkpoint",
             ("run", "--server", "127.0.0.1:1", *common): "server 127.0.0.1:1: set_expression failed"}
    for argv, fragment in cases.items():
        rc, err = _cli(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_serve_without_the_extra_names_it(tmp_path: Path) -> None:
    fake = make_fake_artifacts(tmp_path / "art")
    code = ("import sys\nsys.modules['pytriton'] = None\nfrom rvos_edge.cli import main\n"
            "sys.exit(main(['serve', sys.argv[1]]))")
    p = subprocess.run([sys.executable, "-c", code, str(fake)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "needs the serve extra (not installed: pytriton): pip install 'rvos-edge[serve]'" in p.stderr


def test_prepare_python_pins_numpy_and_finds_libpython(monkeypatch: pytest.MonkeyPatch) -> None:
    import sysconfig
    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/elsewhere{os.pathsep}{libdir}")
    prepare_python()
    assert os.environ["LD_LIBRARY_PATH"] == f"{libdir}{os.pathsep}/elsewhere"
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(UserError, match=r"PyTriton needs numpy 1\.x, numpy 2\.1\.0 is installed"):
        prepare_python()


def test_segmenter_parts_refuse_misuse(engines) -> None:
    seg = Segmenter(engines)
    seg.set_expression("a dog")
    with pytest.raises(UserError, match="no frames pending"):
        seg.clip_inputs()
    frames = video(3, 3)
    assert [seg.add(f) for f in frames] == [False, False, True]
    with pytest.raises(UserError, match="the clip of 3 frames is full"):
        seg.add(frames[0])
    feeds = seg.clip_inputs()
    assert feeds["frames"].shape == (1, 3, 64, 64, 3) and feeds["has_history"].tolist() == [[0.0]]
    out = engines.clip.run(feeds)
    assert_same(seg.take_outputs(out["mask_logits"], out["history_out"]), local_run(engines, "a dog", frames))
    assert seg.pending == 0 and not seg.add(frames[0])
    assert seg.clip_inputs()["has_history"].tolist() == [[1.0]]          # the next clip carries the history


class _FailsOnce(Runner):
    """The clip runner of `engines`, raising on its first call."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.inputs, self.outputs = inner, inner.name, inner.inputs, inner.outputs
        self.calls = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("device lost")
        return self.inner.run(feeds)


def test_an_engine_failure_fails_its_calls_and_resets_their_streams(engines) -> None:
    table = StreamTable(dataclasses.replace(engines, clip=_FailsOnce(engines.clip)), Limits())
    frames = video(5, 6)
    table.handle([Call("a", "set_expression", "a dog", NO_FRAMES), Call("b", "set_expression", "a cat", NO_FRAMES)])
    replies = table.handle([Call("a", "push", "", frames[:4]), Call("b", "flush", "", NO_FRAMES)])
    assert replies[0].error == ("the engine failed on this stream's clip (RuntimeError: device lost); "
                                "the stream was reset")
    assert replies[1].error is None and replies[1].results == []
    (reply,) = table.handle([Call("a", "push", "", frames)])
    assert_same(reply.results, local_run(engines, "a dog", frames))     # it starts again from index 0
