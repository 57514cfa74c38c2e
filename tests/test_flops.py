"""The analytic FLOP count: hand-computed pieces, published ViT counts, FlopCounterMode on the real model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rvos_edge.cli import main
from rvos_edge.config import get_config
from rvos_edge.flops import ROWS, count_flops, cross_check
from rvos_edge.geometry import allowed_pairs


def test_cube_frame_pairs_by_hand() -> None:
    # vit-b16, Tc = 6, 22 x 22 grid, Mw = 11. Shift 0: 2 x 2 whole cubes of 121 cells:
    # 6 * 484^2 + 6 * 5 * (2 * 11^2)^2 = 1_405_536 + 1_756_920.
    assert allowed_pairs((6, 22, 22), 11, 0) == 3_162_456
    # shift 5: segments 5, 11, 6 per axis (squares sum to 182): 1_405_536 + 30 * 182^2.
    assert allowed_pairs((6, 22, 22), 11, 5) == 2_399_256
    # 3 x 4 x 4, Mw = 2, shift 1: segments 1, 2, 1 (squares sum to 6): 3 * 16^2 + 3 * 2 * 6^2.
    assert allowed_pairs((3, 4, 4), 2, 1) == 984
    for grid, cube, shift in (((3, 5, 7), 3, 1), ((5, 7, 9), 3, 1), ((1, 8, 8), 4, 2), ((4, 6, 6), 4, 0)):
        tc, h, w = grid                           # DESIGN's rule, pair by pair
        cells = [(t, y, x) for t in range(tc) for y in range(h) for x in range(w)]

        def cube_of(y: int, x: int) -> tuple[int, int]:
            return (y - shift) // cube, (x - shift) // cube
        brute = sum(1 for (t, y, x) in cells for (u, v, z) in cells if u == t or cube_of(v, z) == cube_of(y, x))
        assert allowed_pairs(grid, cube, shift) == brute


def test_text_encoder_by_hand() -> None:
    # per layer over 77 tokens of width w: 12 * 77 * w^2 (QKV, out, 4x FFN) + 2 * 77^2 * w; then 77 * w * Ce.
    # tiny: 2 * (3_784_704 + 758_912) + 315_392
    assert count_flops(get_config("tiny")).text == 9_402_624
    # vit-b16: 12 * (242_221_056 + 6_071_296) + 20_185_088
    assert count_flops(get_config("vit-b16")).text == 2_999_693_312


@pytest.mark.parametrize("size, published", [(224, 17.5e9), (384, 55.4e9)])
def test_vision_backbone_matches_published_vit_b16(size: int, published: float) -> None:
    """The Swin Transformer paper (Table 1) lists DeiT-B / ViT-B/16 at 17.5 G (224 px) and 55.4 G (384 px)
    "FLOPs": those are multiply-adds, and our backbone row (less CLIP's ln_post @ proj) agrees to 1%."""
    cfg = get_config("vit-b16").replace(image_size=size)
    report = count_flops(cfg, clip_len=1)
    proj = (1 + cfg.num_patches) * cfg.vision_width * cfg.embed_dim
    assert report.clip["vision_backbone"] - proj == pytest.approx(published, rel=0.01)


def test_per_frame_amortisation_and_units() -> None:
    report = count_flops(get_config("demo"), clip_len=4, video_frames=50)
    rows = report.per_frame_macs()
    assert list(rows) == [k for k, _ in ROWS]
    assert rows["text_encoder"] == report.text / 50
    assert rows["str"] == report.clip["str"] / 4 and rows["cf_msa"] < rows["str"]
    added = sum(v for k, v in report.clip.items() if k != "cf_msa") / 4 + report.text / 50
    assert report.macs_per_frame == pytest.approx(added, rel=1e-12)          # CF-MSA counted once, inside STR
    assert report.gflops_per_frame == pytest.approx(2 * report.gmacs_per_frame, rel=1e-12)


@pytest.mark.parametrize("preset, clip_len", [("tiny", 3), ("tiny", 1), ("vit-b16", 6)])
def test_flop_counter_mode_agrees(preset: str, clip_len: int) -> None:
    """FlopCounterMode on the real model (custom kernels' flop formulas registered) within 2%,
    for the clip, the text encoder and the VLFF, STR and head modules separately."""
    check = cross_check(count_flops(get_config(preset), clip_len))
    assert set(check) == {"text", "clip", "vlff", "str", "head"}
    for part, c in check.items():
        assert c["flop_counter"] > 0, part
        assert c["rel_diff"] <= 0.02, (part, c)


def test_flops_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "flops.json"
    assert main(["flops", "tiny", "--clip-len", "3", "--verify", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| module (tiny, clip length 3) | GMACs/frame | GFLOPs/frame |")
    assert "GMACs" in lines[-1] and "GFLOPs per frame" in lines[-1]
    d = json.loads(out.read_text())
    assert set(d["per_frame"]) == {k for k, _ in ROWS}
    assert d["total_per_frame"]["gflops"] == pytest.approx(2 * d["total_per_frame"]["gmacs"])
    assert max(c["rel_diff"] for c in d["flop_counter_check"].values()) <= 0.02


@pytest.mark.parametrize("argv, message", [(["flops", "nope"], "neither a preset"),
                                           (["flops", "tiny", "--clip-len", "0"], "clip length must be >= 1")])
def test_flops_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
