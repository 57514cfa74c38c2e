"""Fixtures of the native runtime's tests, written with the Python package (rvos_edge).

    python native/tests/fixtures.py artifacts OUT        # OUT/tiny, OUT/demo exports, OUT/video.avi,
                                                         # OUT/python_run (`rvos-edge run` on the demo export)
    python native/tests/fixtures.py compare PY NATIVE    # masks of two run folders identical, pixel for pixel
    python native/tests/fixtures.py tokenizer-cases OUT  # texts and the Python tokenizer's ids (JSON)

The ctest fixture (native/tests/CMakeLists.txt) runs `artifacts`; exports already there
from the same checkpoint and rvos_edge sources are kept (a stamp file records them).
The video is lossless (FFV1), so both runtimes decode the same pixels; it has VIDEO_FRAMES
frames, not a multiple of the demo's clip length, is not square, and is large enough that
both runtimes halve its frames before the last resize (runtime/pipeline.prepare_frame).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = REPO / "rvos_edge" / "assets" / "demo.safetensors.gz"
VIDEO_FRAMES = 100
VIDEO_SIZE = (600, 520)        # width, height: at least 4 x the demo's 128, so frames are halved first
EXPRESSION = "the red circle moving right"

# The strings of tests/test_tokenizer.py, and more that exercise the cleaning the native
# tokenizer reproduces (entities, curly quotes, NFC, case) and the truncation with prompts.
TOKENIZER_TEXTS = [
    "the dog jumping over the fence", "a red cup, on the left!", "jekyll", "it's 42",
    "café", "naïve", "😀", "狗在跳", "cafÃ© naÃ¯ve",
    "salt & pepper", "  Salt &amp;\t\n  PEPPER  ", "salt &amp;amp; pepper", "<b> &amp;amp; x",
    "<|endoftext|>", "", "   \n ", "a dog", "the fence",
    " ".join(["dog"] * 100), " ".join(["dog"] * 71), " ".join(["dog"] * 72),
    "The BIG Blue Square on the LEFT", "the green diamond moving up", "you're 'quoted' they'll we'd I'm",
    "“curly” ‘quotes’", "cafe\u0301 (decomposed)", "&lt;tag&gt; &quot;x&quot; &apos;y&apos; a&nbsp;b",
    "&#38; &#x26; &#169; &#0; &#128; &#xD800; &#99999999; &#;", "&ampx &amp &lt3", "ΑΣ ΣΑΣ Straße İstanbul",
    "3.14159 and ½ or Ⅻ", "tab\tand\u00a0nbsp\u2003em-space", "emoji 👍🏽 family 👨‍👩‍👧", "ﬁne ＬＯＵＤ",
    "!!!???...", "don't-stop'n", "x<|startoftext|>y",
]


def tokenizer_cases() -> list[dict]:
    """Each text with its ids from rvos_edge.tokenizer (context 77, 0 and 4 prompts) and
    "unreproduced_ftfy": whether ftfy steps the native tokenizer does not reproduce change it
    (all but the HTML step, straight quotes and NFC; see native/include/rvos_edge/tokenizer.hpp)."""
    import ftfy

    from rvos_edge.tokenizer import tokenize_for_prompts

    cases = []
    for text in TOKENIZER_TEXTS:
        for prompts in (0, 4):
            tok = tokenize_for_prompts([text], prompts)
            cases.append({"text": text, "num_prompts": prompts, "tokens": tok.tokens[0].tolist(),
                          "truncated": tok.truncated[0],
                          "unreproduced_ftfy": ftfy.fix_text(text, unescape_html=False, uncurl_quotes=False,
                                                             normalization=None) != text})
    return cases


def write_video(path: Path) -> None:
    """VIDEO_FRAMES frames: a red circle moving right and a blue square moving down on a gradient."""
    width, height = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"fixtures: OpenCV cannot write FFV1 video {path}")
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 96)], -1).astype(np.uint8)
    sx, sy = width / 200, height / 150                       # the scene is drawn for 200 x 150
    for t in range(VIDEO_FRAMES):
        frame = background.copy()
        cv2.circle(frame, (round(sx * (20 + t * 160 / VIDEO_FRAMES)), round(sy * 50)), round(sy * 18), (0, 0, 230), -1)
        cv2.rectangle(frame, (round(sx * 130), round(sy * (10 + t))), (round(sx * 160), round(sy * (40 + t))),
                      (220, 40, 20), -1)
        writer.write(frame)
    writer.release()


def _sources_digest(checkpoint: Path) -> str:
    """sha256 over the checkpoint and the Python sources an export depends on."""
    h = hashlib.sha256(checkpoint.read_bytes())
    for p in sorted((REPO / "rvos_edge").rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()


def _export(checkpoint: Path, out: Path) -> None:
    stamp = out / "fixture.sha256"
    digest = _sources_digest(checkpoint)
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    from rvos_edge.export.onnx_export import export_artifacts

    export_artifacts(checkpoint, out, progress=False)
    stamp.write_text(digest + "\n")


def make_artifacts(out: Path) -> None:
    from rvos_edge.model import build_model, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    tiny = out / "tiny.safetensors"
    if not tiny.is_file():
        save_checkpoint(build_model("tiny", seed=0), tiny)
    _export(tiny, out / "tiny")
    _export(DEMO_CHECKPOINT, out / "demo")
    write_video(out / "video.avi")
    subprocess.run([sys.executable, "-m", "rvos_edge.cli", "run", str(out / "demo"), "--video", str(out / "video.avi"),
                    "--expr", EXPRESSION, "--out", str(out / "python_run")], check=True)


def compare_runs(python_run: Path, native_run: Path) -> None:
    """Exit 1 unless both runs wrote the same mask files with the same pixels (and the same
    number of frames and non-empty masks in summary.json)."""
    py_masks = sorted(p.name for p in (python_run / "masks").glob("*.png"))
    native_masks = sorted(p.name for p in (native_run / "masks").glob("*.png"))
    if py_masks != native_masks or not py_masks:
        raise SystemExit(f"compare: mask files differ: {len(py_masks)} from Python, {len(native_masks)} native")
    differing = []
    for name in py_masks:
        a = cv2.imread(str(python_run / "masks" / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(native_run / "masks" / name), cv2.IMREAD_UNCHANGED)
        if a.shape != b.shape or not np.array_equal(a, b):
            differing.append(f"{name} ({int(np.sum(a != b)) if a.shape == b.shape else 'shape'} pixels)")
    py, native = (json.loads((r / "summary.json").read_text()) for r in (python_run, native_run))
    for key in ("frames", "clip_len"):
        if py[key] != native[key]:
            differing.append(f"summary {key}: {py[key]} vs {native[key]}")
    if py["expressions"][0]["nonempty_masks"] != native["expressions"][0]["nonempty_masks"]:
        differing.append("summary nonempty_masks")
    if not (native_run / "overlay.mp4").is_file():
        differing.append("no overlay.mp4")
    if differing:
        raise SystemExit("compare: native and Python runs differ: " + ", ".join(differing[:10]))
    print(f"compare: {len(py_masks)} masks identical, pixel for pixel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("artifacts").add_argument("out", type=Path)
    p = sub.add_parser("compare")
    p.add_argument("python_run", type=Path)
    p.add_argument("native_run", type=Path)
    sub.add_parser("tokenizer-cases").add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "artifacts":
        make_artifacts(args.out)
    elif args.command == "compare":
        compare_runs(args.python_run, args.native_run)
    else:
        lines = (json.dumps(case, ensure_ascii=False) for case in tokenizer_cases())
        args.out.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")   # one case a line


if __name__ == "__main__":
    main()
