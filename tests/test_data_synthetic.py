"""The synthetic world: determinism, masks that match their objects, and expressions that
single out the target (checked from the scene's geometry, not from the generator's choices)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rvos_edge.data import KINDS, SyntheticDataset, generate
from rvos_edge.data.synthetic import COLOURS, SHAPES
from rvos_edge.errors import UserError

SAMPLES = [generate(3, i) for i in range(40)]

# Areas of the shapes of radius r, from the geometry the generator documents: circle pi r^2; square of half side 0.85 r; equilateral triangle of
# circumradius 1.3 r; diamond of half diagonal 1.1 r; cross of arms 2r long and 0.76 r wide.
AREA = {"circle": math.pi, "square": (1.7) ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.3 ** 2,
        "diamond": 2 * 1.1 ** 2, "cross": 2 * 2 * 0.76 - 0.76 ** 2}
# A pixel is in when its centre is: the count differs from the area by less than half the perimeter.
PERIMETER = {"circle": 2 * math.pi, "square": 4 * 1.7, "triangle": 3 * 1.3 * math.sqrt(3),
             "diamond": 4 * 1.1 * math.sqrt(2), "cross": 8 * (1 - 0.38) + 4 * 0.76}
def _words(expression: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, size) named in the expression, None where it names none."""
    w = expression.replace("-", " ").split()
    colour = next((c for c in COLOURS if c in w), None)
    shape = next((s for s in SHAPES if s in w), None)
    size = next((s for s in ("small", "big") if s in w), None)
    return colour, shape, size


def _motion(expression: str) -> str | None:
    e = expression
    if "bounc" in e:
        return "bounce"
    if "still" in e or "not moving" in e or "motionless" in e or "stays in place" in e:
        return "still"
    for word, motion in (("left", "left"), ("right", "right"), ("upwards", "up"), (" up", "up"),
                         ("downwards", "down"), (" down", "down")):
        if word in e and ("mov" in e or "going" in e):
            return motion
    return None


def _matching(sample, colour, shape, size):
    return [o for o in sample.meta["objects"]
            if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
            and (size is None or o.size == size)]


def _observed_motion(centres: np.ndarray) -> str:
    """The motion seen in a trajectory: steps that are not wrap-around jumps, by axis and sign."""
    d = np.diff(centres, axis=0)
    d = d[np.abs(d).max(1) < 10]
    if np.abs(d).max() < 1e-6:
        return "still"
    moving = np.abs(d).mean(0) > 1e-6
    if moving.all():
        return "bounce"
    axis = int(np.argmax(moving))
    sign = np.sign(d[:, axis].mean())
    return {(0, -1): "left", (0, 1): "right", (1, -1): "up", (1, 1): "down"}[(axis, int(sign))]


def test_same_seed_same_bytes_and_seeds_differ():
    for i in (0, 1, 2, 3, 17):
        a, b = generate(11, i), generate(11, i)
        assert a.frames.tobytes() == b.frames.tobytes()
        assert a.masks.tobytes() == b.masks.tobytes()
        assert (a.expression, a.kind, a.object_id, a.name) == (b.expression, b.kind, b.object_id, b.name)
    assert generate(11, 0).frames.tobytes() != generate(12, 0).frames.tobytes()
    data = SyntheticDataset(11, 5)
    assert len(data) == 5 and data[4].frames.tobytes() == generate(11, 4).frames.tobytes()
    with pytest.raises(IndexError):
        data[5]


def test_format_and_kinds():
    for i, s in enumerate(SAMPLES):
        assert s.kind == KINDS[i % 4]
        assert s.frames.dtype == np.uint8 and s.frames.shape[1:] == (128, 128, 3)
        assert s.masks.dtype == np.bool_ and s.masks.shape == s.frames.shape[:3]
        assert 12 <= s.num_frames <= 36
        assert 2 <= len(s.meta["objects"]) <= 5
        assert s.expression.startswith("the ") and s.expression == s.expression.lower()
    only = SyntheticDataset(3, 4, kinds=("motion",))
    assert {only[i].kind for i in range(4)} == {"motion"}
    with pytest.raises(UserError):
        SyntheticDataset(3, 4, kinds=("colour",))


def test_every_mask_matches_its_object():
    yy, xx = np.mgrid[0:128, 0:128]
    checked_isolated = 0
    for s in SAMPLES:
        objects, o = s.meta["objects"], s.meta["target"]
        colour = np.array(COLOURS[o.colour], np.uint8)
        for t in range(s.num_frames):
            cx, cy = o.centres[t]
            near = (xx - cx) ** 2 + (yy - cy) ** 2 <= (o.extent + 1) ** 2
            m = s.masks[t]
            # every mask pixel has the object's colour and lies within its extent
            assert (s.frames[t][m] == colour).all()
            assert not (m & ~near).any()
            inside = o.extent + 1 <= min(cx, cy, 127 - cx, 127 - cy)
            alone = all(np.hypot(*(p.centres[t] - o.centres[t])) > p.extent + o.extent + 2
                        for p in objects if p is not o)
            if inside and alone:  # fully visible: the mask is the whole shape, centred on the object
                checked_isolated += 1
                assert abs(m.sum() - AREA[o.shape] * o.radius ** 2) < PERIMETER[o.shape] * o.radius / 2
                ys, xs = np.nonzero(m)
                assert abs(xs.mean() - cx) < 0.75 and abs(ys.mean() - cy) < 0.75
                assert ((s.frames[t] == colour).all(-1) & near == m).all()
            if min(cx, cy) < -o.extent - 1 or max(cx, cy) > 128 + o.extent:
                assert not m.any()
    assert checked_isolated > 100


def test_expressions_single_out_the_target():
    for s in SAMPLES:
        target = s.meta["target"]
        colour, shape, size = _words(s.expression)
        assert colour or shape
        alike = _matching(s, colour, shape, size)
        assert target in alike
        motion = _motion(s.expression)
        if motion is not None:
            assert _observed_motion(target.centres) == motion
            alike = [o for o in alike if _observed_motion(o.centres) == motion]
        if s.kind == "position":
            assert len(alike) >= 2
            place = next(p for p in ("left", "right", "top", "bottom", "middle", "lowest") if p in s.expression)
            axes = {"left": [0], "right": [0], "top": [1], "bottom": [1], "lowest": [1], "middle": [0, 1]}[place]
            ok = []
            for axis in axes:   # the look-alikes stand on a line and move only across it
                if any(np.ptp(o.centres[:, axis]) > 0 for o in alike):
                    continue
                coords = sorted(float(o.centres[0, axis]) for o in alike)
                want = {"left": coords[0], "top": coords[0], "right": coords[-1], "bottom": coords[-1],
                        "lowest": coords[-1], "middle": coords[len(coords) // 2]}[place]
                ok.append(float(target.centres[0, axis]) == want and (place != "middle" or len(coords) == 3))
            assert any(ok), s.expression
        else:
            assert alike == [target], s.expression


def test_hard_cases():
    motion = [s for s in SAMPLES if s.kind == "motion"]
    for s in motion:  # identical twins that differ only in their motion
        t = s.meta["target"]
        twins = [o for o in s.meta["objects"] if (o.colour, o.shape, o.radius) == (t.colour, t.shape, t.radius)]
        assert len(twins) >= 2
        assert len({_observed_motion(o.centres) for o in twins}) == len(twins)
    for s in (s for s in SAMPLES if s.kind == "reappearance"):
        seen = s.masks.any((1, 2))
        hidden = [k for k in range(6, s.num_frames - 5, 6) if not seen[k:k + 6].any()]
        assert hidden, s.name
        assert seen[:hidden[0]].sum() >= 3 and seen[hidden[0] + 6:].sum() >= 3


def test_pretraining_frames_are_deterministic_and_wear_their_objects_colours():
    from rvos_edge.data.synthetic import generate_frame

    for index in range(12):
        frame, objects, labels = generate_frame(4, index)
        again = generate_frame(4, index)
        assert frame.tobytes() == again[0].tobytes() and labels.tobytes() == again[2].tobytes()
        assert set(np.unique(labels).tolist()) <= {0, *(o.id for o in objects)}
        for o in objects:
            assert (frame[labels == o.id] == COLOURS[o.colour]).all()
