"""`rvos-edge run`: output layout, summary, and bad input as one stderr line + exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from fake_artifacts import edit_manifest, make_fake_artifacts

from rvos_edge.cli import main
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime import Segmenter
from rvos_edge.runtime import run as run_module
from rvos_edge.runtime.pipeline import PreparedFrame

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art")


def frame(t: int, h: int = 48, w: int = 80) -> np.ndarray:
    f = np.full((h, w, 3), 10, np.uint8)
    f[8:40, 4 * t:4 * t + 30] = (250, 250, 250)
    return f


def write_video(path: Path, n: int, fourcc: str = "MJPG", size: tuple[int, int] = (80, 48)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 12, size)
    assert w.isOpened()
    for t in range(n):
        w.write(frame(t, size[1], size[0]))
    w.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(["run", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_video_one_expression(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = write_video(tmp_path / "clip.avi", 7)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(capsys, art, "--video", video, "--expr", "the white box", "--out", out)
    assert rc == 0 and stderr == ""
    assert stdout.count("\n") == 1 and "7 frames" in stdout and "ort fp32" in stdout
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in masks] == [f"{i:05d}.png" for i in range(7)]

    decoded = read_video(video)
    seg = Segmenter.open(art)
    seg.set_expression("the white box")
    expected = [r for f in decoded for r in seg.push(f)] + seg.flush()
    for p, r in zip(masks, expected):
        png = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert png.shape == (48, 80) and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png == 255, r.mask)
    assert any(r.mask.any() for r in expected)

    overlay = read_video(out / "overlay.mp4")
    assert len(overlay) == 7 and overlay[0].shape == (48, 80, 3)
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == 7 and s["backend"] == "ort" and s["precision"] == "fp32" and s["clip_len"] == 3
    assert s["expressions"] == [{"text": "the white box", "masks": "masks", "truncated": False,
                                 "nonempty_masks": sum(r.mask.any() for r in expected)}]
    assert set(s["ms_total"]) == {"decode", "resize", "text", "engine", "upsample", "write"}
    assert s["fps"]["end_to_end"] > 0 and s["fps"]["engine"] > s["fps"]["end_to_end"]
    assert "stopped_at" not in s and "error" not in s
    assert no_temp_files(out)


def test_frames_folder_several_expressions(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["img1", "img2", "img10", "img3"]                       # natural order: 1, 2, 3, 10
    for t, name in enumerate(names):
        cv2.imwrite(str(folder / f"{name}.png"), frame(t, 40 + t, 60))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(capsys, art, "--frames", folder, "--expr", "The white box!", "--expr", "a dark thing",
                            "--out", out, "--clip-len", "3")
    assert rc == 0 and "4 frames x 2 expression(s)" in stdout
    s = json.loads((out / "summary.json").read_text())
    assert [e["masks"] for e in s["expressions"]] == ["masks/0_the-white-box", "masks/1_a-dark-thing"]
    for e in s["expressions"]:
        assert sorted(p.name for p in (out / e["masks"]).iterdir()) == sorted(f"{n}.png" for n in names)
    # mask size is each image's own size; natural order decides the frame index
    assert cv2.imread(str(out / "masks/0_the-white-box/img10.png"), cv2.IMREAD_UNCHANGED).shape == (42, 60)
    overlay = read_video(out / "overlay.mp4")
    assert len(overlay) == 4 and overlay[0].shape == (40, 60, 3)


def test_max_frames_and_default_backend(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = write_video(tmp_path / "clip.avi", 10)
    out = tmp_path / "out"
    rc, _, _ = run_cli(capsys, art, "--video", video, "--expr", "box", "--out", out, "--max-frames", "4",
                       "--threads", "1")
    assert rc == 0 and len(list((out / "masks").iterdir())) == 4
    assert json.loads((out / "summary.json").read_text())["frames"] == 4


def test_long_expression_warns_on_one_line(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = write_video(tmp_path / "clip.avi", 3)
    rc, _, stderr = run_cli(capsys, art, "--video", video, "--expr", "big " * 90, "--out", tmp_path / "out")
    assert rc == 0 and stderr.count("\n") == 1 and stderr.startswith("rvos-edge run: warning: expression longer")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["expressions"][0]["truncated"] is True


def _corrupt(art: Path, dst: Path, how: str) -> Path:
    dst.mkdir()
    for p in art.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    if how == "sha":
        with open(dst / "text_encoder.onnx", "ab") as f:
            f.write(b"x")
    elif how == "version":
        edit_manifest(dst, format_version=7)
    elif how == "onnx":
        from rvos_edge.fileio import sha256_file

        (dst / "clip_model.onnx").write_bytes(b"\x08garbage" * 50)
        d = json.loads((dst / "manifest.json").read_text())
        d["files"]["clip_model.onnx"] = sha256_file(dst / "clip_model.onnx")
        (dst / "manifest.json").write_text(json.dumps(d))
    return dst


BAD_INPUTS = {
    "missing video": (lambda a, t: [a, "--video", t / "missing.mp4", "--expr", "x"], "does not exist"),
    "unreadable video": (lambda a, t: [a, "--video", _text_file(t / "fake.mp4"), "--expr", "x"], "cannot open video"),
    "video is a folder": (lambda a, t: [a, "--video", t, "--expr", "x"], "is not a file"),
    "zero-frame avi": (lambda a, t: [a, "--video", write_video(t / "empty.avi", 0), "--expr", "x"], "video"),
    "zero-frame mp4": (lambda a, t: [a, "--video", write_video(t / "empty.mp4", 0, "mp4v"), "--expr", "x"], "video"),
    "empty frames folder": (lambda a, t: [a, "--frames", _empty_dir(t / "frames"), "--expr", "x"], "has no images"),
    "missing frames folder": (lambda a, t: [a, "--frames", t / "nope", "--expr", "x"], "does not exist"),
    "camera": (lambda a, t: [a, "--camera", "97", "--expr", "x"], "cannot open camera 97"),
    "corrupt onnx": (lambda a, t: [_corrupt(a, t / "bad", "onnx"), "--video", write_video(t / "v.avi", 3),
                                   "--expr", "x"], "onnxruntime cannot load"),
    "sha mismatch": (lambda a, t: [_corrupt(a, t / "bad", "sha"), "--video", write_video(t / "v.avi", 3),
                                   "--expr", "x"], "text_encoder.onnx does not match its sha256"),
    "format version": (lambda a, t: [_corrupt(a, t / "bad", "version"), "--video", write_video(t / "v.avi", 3),
                                     "--expr", "x"], "re-export with this version"),
    "no manifest": (lambda a, t: [_empty_dir(t / "nothing"), "--video", write_video(t / "v.avi", 3),
                                  "--expr", "x"], "no manifest.json"),
    "empty expression": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", ""], "expression is empty"),
    "blank expression": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "ok", "--expr", " \t"],
                         "expression is empty"),
    "out is a file": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "x", "--out",
                                    _text_file(t / "out")], "cannot write to output folder"),
    "out under a file": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "x", "--out",
                                       _text_file(t / "file") / "out"], "cannot write to output folder"),
    "clip length": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "x", "--clip-len", "5"],
                    "clip length 5"),
    "trt": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "x", "--backend", "trt"],
            "TensorRT"),
    "max frames": (lambda a, t: [a, "--video", write_video(t / "v.avi", 3), "--expr", "x", "--max-frames", "0"],
                   "--max-frames"),
}


def _text_file(path: Path) -> Path:
    path.write_text("not a video")
    return path


def _empty_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build, fragment = BAD_INPUTS[case]
    argv = build(art, tmp_path)
    if "--out" not in argv:
        argv += ["--out", tmp_path / "result"]
    rc, stdout, stderr = run_cli(capsys, *argv)
    assert rc == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("rvos-edge run: error: ") and fragment in stderr, stderr
    result = tmp_path / "result"
    assert not result.exists() or not any(result.rglob("*"))


def test_decode_failure_keeps_masks(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = write_video(tmp_path / "clip.avi", 20)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 3 // 4])                 # the container still declares 20 frames
    decodable = len(read_video(video))
    assert 0 < decodable < 20
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(capsys, art, "--video", video, "--expr", "box", "--out", out)
    assert rc == 2 and stdout.count("\n") == 1 and stderr.count("\n") == 1
    assert f"stopped at frame {decodable} of the 20" in stderr and "kept" in stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == s["stopped_at"] == decodable and "stopped at frame" in s["error"]
    assert len(list((out / "masks").iterdir())) == decodable and len(read_video(out / "overlay.mp4")) == decodable
    assert no_temp_files(out)


def test_unreadable_image_halfway(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(5):
        cv2.imwrite(str(folder / f"{t:03d}.png"), frame(t))
    (folder / "003.png").write_bytes(b"broken")
    out = tmp_path / "out"
    rc, _, stderr = run_cli(capsys, art, "--frames", folder, "--expr", "box", "--out", out)
    assert rc == 2 and "003.png" in stderr and stderr.count("\n") == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped_at"] == 3 and sorted(p.name for p in (out / "masks").iterdir()) == ["000.png", "001.png", "002.png"]


def test_subprocess_no_traceback_no_native_noise_no_torch(art: Path, tmp_path: Path) -> None:
    """The whole stderr (native writes included) is one line on failure and empty on success."""
    broken_header = write_video(tmp_path / "header.avi", 20)
    broken_header.write_bytes(broken_header.read_bytes()[:3000])
    halfway = write_video(tmp_path / "halfway.avi", 20)
    halfway.write_bytes(halfway.read_bytes()[:len(halfway.read_bytes()) // 2])
    code = ("import sys; from rvos_edge.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv, rc_expected in [(["--video", tmp_path / "missing.mp4"], 2), (["--video", broken_header], 2),
                              (["--video", halfway], 2), (["--camera", "97"], 2),
                              (["--video", write_video(tmp_path / "ok.avi", 4)], 0)]:
        p = subprocess.run([sys.executable, "-c", code, "run", str(art), *map(str, argv), "--expr", "box",
                            "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == rc_expected, p.stderr
        assert "Traceback" not in p.stderr and p.stderr.count("\n") == (1 if rc_expected else 0), p.stderr


def rvos_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rvos-edge-")]


def test_prepare_on_the_decode_thread_and_writing_on_the_writer_thread(
        art: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, set[str]] = {"prepare": set(), "write": set()}
    original = Segmenter.prepare

    def prepare(self: Segmenter, frame: np.ndarray) -> PreparedFrame:
        threads["prepare"].add(threading.current_thread().name)
        return original(self, frame)

    def write(path: Path, data: bytes) -> None:
        if path.suffix == ".png":
            threads["write"].add(threading.current_thread().name)
        atomic_write_bytes(path, data)

    monkeypatch.setattr(Segmenter, "prepare", prepare)
    monkeypatch.setattr(run_module, "atomic_write_bytes", write)
    video = write_video(tmp_path / "clip.avi", 7)
    rc, _, _ = run_cli(capsys, art, "--video", video, "--expr", "box", "--expr", "other", "--out", tmp_path / "out")
    assert rc == 0 and len(list((tmp_path / "out" / "masks").rglob("*.png"))) == 14
    assert threads == {"prepare": {"rvos-edge-prefetch"}, "write": {"rvos-edge-writer"}}
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["ms_total"]["resize"] > 0 and s["ms_total"]["write"] > 0
    assert rvos_threads() == []


def test_video_decoded_on_one_thread_next_to_a_cpu_engine(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rvos_edge.runtime import video as video_module

    video = write_video(tmp_path / "clip.mp4", 9, fourcc="mp4v", size=(320, 240))
    frames = {}
    for threads in (1, 0):
        source = video_module.open_video(video, decode_threads=threads)
        if threads:
            assert source._capture.get(cv2.CAP_PROP_N_THREADS) == 1
        frames[threads] = [f for _, f in source]
        source.close()
    assert len(frames[1]) == 9 and all(np.array_equal(a, b) for a, b in zip(frames[1], frames[0]))
    asked = []
    opened = run_module.open_source
    monkeypatch.setattr(run_module, "open_source", lambda **kw: asked.append(kw["decode_threads"]) or opened(**kw))
    rc, _, _ = run_cli(capsys, art, "--video", video, "--expr", "box", "--out", tmp_path / "out")
    assert rc == 0 and asked == [1]


def test_writer_error_is_one_line_and_leaves_no_thread(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 4:
            raise UserError(f"cannot write {path.name}: no space left on device")
        atomic_write_bytes(path, data)

    monkeypatch.setattr(run_module, "atomic_write_bytes", failing)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(capsys, art, "--video", write_video(tmp_path / "clip.avi", 30), "--expr", "box",
                                 "--out", out)
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1
    assert stderr.startswith("rvos-edge run: error: cannot write 00003.png: no space left on device")
    assert not out.exists() and not list(tmp_path.glob(".*"))             # nothing half-written is left
    assert len(calls) == 4 and rvos_threads() == []                         # the writer stopped at the error


def test_interrupt_abandons_the_queued_writes_and_leaves_no_thread(
        art: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    push = Segmenter.push
    pushed = []

    def interrupted(self: Segmenter, frame: PreparedFrame) -> list:
        pushed.append(frame)
        if len(pushed) == 10:
            raise KeyboardInterrupt                                         # as a second Ctrl-C does
        return push(self, frame)

    monkeypatch.setattr(Segmenter, "push", interrupted)
    out = tmp_path / "out"
    rc, _, stderr = run_cli(capsys, art, "--video", write_video(tmp_path / "clip.avi", 30), "--expr", "box",
                            "--out", out)
    assert rc == 130 and stderr.endswith("rvos-edge run: interrupted\n")
    assert not out.exists() and rvos_threads() == []
