"""Segmenter on fake ORT graphs: clips, padding, history, text cache, upsampling and scores,
all checked against an independent recomputation (numpy references, torch interpolate)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_artifacts import TINY, make_fake_artifacts, ref_clip, ref_text

from rvos_edge.errors import UserError
from rvos_edge.runtime import Engines, ExpressionTruncatedWarning, Runner, Segmenter, open_engines
from rvos_edge.runtime.pipeline import LRUCache, PreparedFrame, prepare_frame, upsample_logits, upsampled_mask
from rvos_edge.tokenizer import tokenize_for_prompts


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art")


@pytest.fixture(scope="module")
def art_range(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art", clip_len=(2, 6))


class Recorder(Runner):
    """Wraps a runner and keeps a copy of every feed and output."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.inputs, self.outputs = inner, inner.name, inner.inputs, inner.outputs
        self.calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(feeds)
        self.calls.append(({k: v.copy() for k, v in feeds.items()}, {k: v.copy() for k, v in out.items()}))
        return out


def recorded(path: Path) -> Engines:
    e = open_engines(path)
    return dataclasses.replace(e, text=Recorder(e.text), clip=Recorder(e.clip))


def frame_with_box(h: int, w: int, t: int) -> np.ndarray:
    """Dark BGR frame with a bright box that moves with t."""
    f = np.full((h, w, 3), 20, np.uint8)
    y0, x0 = (h // 4 + t) % max(1, h // 2), (w // 5 + 2 * t) % max(1, w // 2)
    f[y0:y0 + h // 2, x0:x0 + w // 3] = (200, 220, 240)
    return f


def halved(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 with even H and W -> [H / 2, W / 2, 3]: the means of 2 x 2 blocks, rounded half up."""
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    f = frame.astype(np.uint16)
    return ((f[0::2, 0::2] + f[0::2, 1::2] + f[1::2, 0::2] + f[1::2, 1::2] + 2) // 4).astype(np.uint8)


def reference_stream(frames: list[np.ndarray], text: str, tc: int) -> list[tuple[np.ndarray, float]]:
    """Independent pipeline: RGB S x S frames (by the documented interpolation rule), clips of tc
    padded with the last frame, history chained, logits upsampled with torch, mask and score."""
    ref = ref_text(tokenize_for_prompts([text], 2).tokens)
    rgb = []
    for f in frames:
        while f.shape[0] >= 256 and f.shape[1] >= 256:
            f = halved(f)
        h, w = f.shape[:2]
        interp = cv2.INTER_AREA if h >= 64 and w >= 64 else cv2.INTER_LINEAR
        rgb.append((f if (h, w) == (64, 64) else cv2.resize(f, (64, 64), interpolation=interp))[..., ::-1])
    history, has, logits = np.zeros((2, 64)), 0.0, []
    for start in range(0, len(frames), tc):
        clip = rgb[start:start + tc]
        clip = clip + [clip[-1]] * (tc - len(clip))
        lg, history = ref_clip(np.stack(clip), ref, history, has)
        has = 1.0
        logits.extend(lg[: min(tc, len(frames) - start)])
    out = []
    for f, lg in zip(frames, logits):
        up = F.interpolate(torch.from_numpy(lg)[None, None], size=f.shape[:2], mode="bilinear",
                           align_corners=False)[0, 0].numpy()
        prob = 1 / (1 + np.exp(-up))
        out.append((up, float(prob[up > 0].mean()) if (up > 0).any() else 0.0))
    return out


def assert_matches(results, expected) -> None:
    assert len(results) == len(expected)
    for i, (r, (up, score)) in enumerate(zip(results, expected)):
        assert r.index == i and r.mask.dtype == np.bool_ and r.mask.shape == up.shape
        sure = np.abs(up) > 1e-4
        assert np.array_equal(r.mask[sure], up[sure] > 0)
        assert r.score == pytest.approx(score, abs=1e-4)


def test_one_mask_per_frame_at_its_own_size(art: Path) -> None:
    sizes = [(64, 64), (48, 80), (120, 90), (30, 200), (64, 64), (7, 9), (480, 640)]   # 7 frames, Tc = 3
    frames = [frame_with_box(h, w, t) for t, (h, w) in enumerate(sizes)]
    seg = Segmenter(recorded(art))
    assert seg.clip_len == 3 and seg.set_expression("the bright box") == []
    results = []
    for i, f in enumerate(frames):
        got = seg.push(f)
        assert [r.index for r in got] == ([i - 2, i - 1, i] if i % 3 == 2 else [])
        results += got
    assert seg.pending == 1
    results += seg.flush()
    assert seg.pending == 0 and seg.flush() == []
    assert_matches(results, reference_stream(frames, "the bright box", 3))
    assert any(r.mask.any() for r in results) and any(not r.mask.all() for r in results)


def test_padding_repeats_the_last_frame_and_drops_its_outputs(art: Path) -> None:
    e = recorded(art)
    seg = Segmenter(e)
    seg.set_expression("x")
    frames = [frame_with_box(64, 64, t) for t in range(5)]
    results = [r for f in frames for r in seg.push(f)] + seg.flush()
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    fed = [c[0]["frames"] for c in e.clip.calls]
    assert [x.shape for x in fed] == [(1, 3, 64, 64, 3)] * 2
    rgb = [f[..., ::-1] for f in frames]
    assert np.array_equal(fed[0][0], np.stack(rgb[:3]))
    assert np.array_equal(fed[1][0], np.stack([rgb[3], rgb[4], rgb[4]]))


def test_history_is_carried_and_cleared(art: Path) -> None:
    e = recorded(art)
    seg = Segmenter(e)
    seg.set_expression("a")
    frames = [frame_with_box(64, 64, t) for t in range(12)]
    for f in frames[:9]:
        seg.push(f)
    calls = e.clip.calls
    assert [float(c[0]["has_history"][0, 0]) for c in calls] == [0.0, 1.0, 1.0]
    assert not calls[0][0]["history"].any()
    for prev, nxt in zip(calls, calls[1:]):
        assert np.array_equal(nxt[0]["history"], prev[1]["history_out"])
    seg.push(frames[9])
    flushed = seg.set_expression("b")              # the pending frame runs with "a" first
    assert [r.index for r in flushed] == [9] and len(calls) == 4 and calls[3][0]["has_history"][0, 0] == 1.0
    for f in frames[10:]:
        seg.push(f)
    seg.push(frames[0])
    assert calls[4][0]["has_history"][0, 0] == 0.0 and not calls[4][0]["history"].any()
    seg.push(frames[1])
    seg.reset()                                    # drops the pending frame, restarts the index
    assert seg.pending == 0
    got = [r for f in frames[:3] for r in seg.push(f)]
    assert [r.index for r in got] == [0, 1, 2]
    assert calls[-1][0]["has_history"][0, 0] == 0.0 and seg.expression == "b"


def test_text_encoder_runs_once_per_expression(art: Path) -> None:
    e = recorded(art)
    seg = Segmenter(e, text_cache_size=2)
    for text in ["a", "b", "a", "a", "b"]:
        seg.set_expression(text)
    assert len(e.text.calls) == 2 and seg.timings.text_runs == 2
    seg.set_expression("c")                        # evicts "a" (least recently used)
    seg.set_expression("b")
    seg.set_expression("a")
    assert len(e.text.calls) == 4
    fed_tokens = [c[0]["tokens"] for c in e.text.calls]
    assert np.array_equal(fed_tokens[0], tokenize_for_prompts(["a"], 2).tokens)
    seg.push(frame_with_box(64, 64, 0))
    seg.flush()
    np.testing.assert_array_equal(e.clip.calls[-1][0]["text_global"], e.text.calls[-1][1]["text_global"])


def test_lru_cache() -> None:
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
    with pytest.raises(UserError):
        LRUCache(0)


@pytest.mark.parametrize("h, w", [(16, 16), (64, 64), (48, 80), (480, 640), (10, 12), (8, 8), (1, 1), (5, 300)])
def test_upsampling_matches_torch_interpolate(h: int, w: int) -> None:
    logits = np.random.RandomState(h * w).randn(16, 16).astype(np.float32)
    ours = upsample_logits(logits, h, w)
    theirs = F.interpolate(torch.from_numpy(logits)[None, None], size=(h, w), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
    assert ours.shape == (h, w)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_mask_and_score_at_the_logits_size() -> None:
    logits = np.array([[-1.0, 0.0], [2.0, 0.5]], np.float32)
    mask, score = upsampled_mask(logits, 2, 2)
    assert mask.tolist() == [[False, False], [True, True]]
    assert score == pytest.approx((1 / (1 + np.exp(-2)) + 1 / (1 + np.exp(-0.5))) / 2)
    assert upsampled_mask(np.full((3, 3), -1.0, np.float32), 3, 3)[1] == 0.0


def test_prepare_frame_interpolation_rule() -> None:
    rng = np.random.RandomState(0)
    big, small, mixed = (rng.randint(0, 256, s).astype(np.uint8) for s in ((128, 96, 3), (20, 30, 3), (200, 40, 3)))
    assert np.array_equal(prepare_frame(big, 64), cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)[..., ::-1])
    assert np.array_equal(prepare_frame(small, 64), cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR)[..., ::-1])
    assert np.array_equal(prepare_frame(mixed, 64), cv2.resize(mixed, (64, 64), interpolation=cv2.INTER_LINEAR)[..., ::-1])
    exact = rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)
    assert np.array_equal(prepare_frame(exact, 64), exact[..., ::-1])
    assert np.array_equal(prepare_frame(big[::2, ::2], 64)[0, 0], cv2.resize(
        np.ascontiguousarray(big[::2, ::2]), (64, 64), interpolation=cv2.INTER_AREA)[0, 0, ::-1])


def test_large_frames_are_halved_before_the_last_resize() -> None:
    """A frame at least 4S high and wide is halved (2 x 2 means) while it stays so, then resized once."""
    rng = np.random.RandomState(1)
    hd = rng.randint(0, 256, (1080, 1920, 3)).astype(np.uint8)                   # -> 540 x 960 -> 270 x 480 -> 128
    expected = cv2.resize(halved(halved(hd)), (128, 128), interpolation=cv2.INTER_AREA)[..., ::-1]
    assert np.array_equal(prepare_frame(hd, 128), expected)
    square = rng.randint(0, 256, (256, 256, 3)).astype(np.uint8)                 # 4S: halved, then 2 x 2 means again
    assert np.array_equal(prepare_frame(square, 64), halved(halved(square))[..., ::-1])
    odd = rng.randint(0, 256, (301, 515, 3)).astype(np.uint8)                    # odd sides: INTER_AREA to 150 x 257
    once = cv2.resize(odd, (257, 150), interpolation=cv2.INTER_AREA)
    assert np.array_equal(prepare_frame(odd, 64), cv2.resize(once, (64, 64), interpolation=cv2.INTER_AREA)[..., ::-1])
    # still an area average: a gradient with a sharp disc stays close to one INTER_AREA
    ys, xs = np.mgrid[0:1080, 0:1920]
    disc = np.stack([xs * 255 // 1920, ys * 255 // 1080, np.full_like(xs, 96)], -1).astype(np.uint8)
    cv2.circle(disc, (640, 540), 180, (0, 0, 230), -1)
    one = cv2.resize(disc, (128, 128), interpolation=cv2.INTER_AREA)[..., ::-1].astype(int)
    apart = np.abs(prepare_frame(disc, 128).astype(int) - one)
    assert apart.mean() < 0.25 and (apart > 2).mean() < 0.005 and apart.max() <= 16


def test_empty_frame_gives_empty_mask_and_zero_score(art: Path) -> None:
    seg = Segmenter(open_engines(art))
    seg.set_expression("nothing here")
    results = [r for _ in range(3) for r in seg.push(np.zeros((40, 50, 3), np.uint8))]
    assert [(r.mask.any(), r.score) for r in results] == [(False, 0.0)] * 3


def test_bad_input(art: Path) -> None:
    seg = Segmenter.open(art)
    with pytest.raises(UserError, match="set_expression"):
        seg.push(frame_with_box(64, 64, 0))
    for text in ["", "   ", "\t\n"]:
        with pytest.raises(UserError, match="expression is empty"):
            seg.set_expression(text)
    with pytest.raises(UserError, match="expression is empty"):
        seg.set_expression(None)  # type: ignore[arg-type]
    seg.set_expression("ok")
    for bad in [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
                np.zeros((0, 8, 3), np.uint8), [[1, 2, 3]]]:
        with pytest.raises(UserError, match="H x W x 3 uint8"):
            seg.push(bad)  # type: ignore[arg-type]
    assert seg.pending == 0
    with pytest.raises(UserError, match="clip length 4"):
        Segmenter.open(art, clip_len=4)


def test_long_expression_is_truncated_with_a_warning(art: Path) -> None:
    e = recorded(art)
    seg = Segmenter(e)
    long_text = "the " + "very " * 100 + "red cup"
    with pytest.warns(ExpressionTruncatedWarning, match="73-token context"):
        seg.set_expression(long_text)
    tokens = e.text.calls[0][0]["tokens"][0]
    assert tokens[0] == 49406 and tokens[74] == 49407 and not tokens[75:].any()
    with pytest.warns(ExpressionTruncatedWarning):             # again from the cache
        seg.set_expression(long_text)


def test_clip_length_within_a_range(art_range: Path) -> None:
    e = recorded(art_range)
    seg = Segmenter(e, clip_len=5)
    seg.set_expression("box")
    frames = [frame_with_box(50, 70, t) for t in range(12)]
    results = [r for f in frames for r in seg.push(f)] + seg.flush()
    assert [c[0]["frames"].shape[1] for c in e.clip.calls] == [5, 5, 5]
    assert_matches(results, reference_stream(frames, "box", 5))
    assert Segmenter(e).clip_len == TINY.clip_len


def test_timings(art: Path) -> None:
    seg = Segmenter(open_engines(art))
    seg.set_expression("box")
    for t in range(4):
        seg.push(frame_with_box(32, 32, t))
    seg.flush()
    t = seg.timings
    assert (t.frames, t.clips, t.text_runs) == (4, 2, 1)
    ms = t.ms()
    assert set(ms) == {"resize", "text", "engine", "upsample"} and all(v > 0 for v in ms.values())
    assert (t + t).frames == 8


def test_package_level_import() -> None:
    from rvos_edge import Segmenter as S

    assert S is Segmenter


def test_prepared_frames_give_the_same_results(art: Path) -> None:
    sizes = [(64, 64), (48, 80), (480, 640), (7, 9), (120, 90)]
    frames = [frame_with_box(h, w, t) for t, (h, w) in enumerate(sizes)]
    direct, prepared = Segmenter(open_engines(art)), Segmenter(open_engines(art))
    for seg in (direct, prepared):
        seg.set_expression("the bright box")
    a = [r for f in frames for r in direct.push(f)] + direct.flush()
    ready = [prepared.prepare(f) for f in frames]
    assert all(isinstance(p, PreparedFrame) and p.size == f.shape[:2] for p, f in zip(ready, frames))
    b = [r for p in ready for r in prepared.push(p)] + prepared.flush()
    assert [(r.index, r.score) for r in a] == [(r.index, r.score) for r in b]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert direct.timings.resize_s > 0 and prepared.timings.resize_s == 0 and prepared.timings.frames == 5
    with pytest.raises(UserError, match="prepared frame must be 64 x 64 x 3 uint8"):
        prepared.push(PreparedFrame(np.zeros((32, 32, 3), np.uint8), (100, 100)))
    with pytest.raises(UserError, match="H x W x 3 uint8"):
        prepared.prepare(np.zeros((8, 8), np.uint8))
