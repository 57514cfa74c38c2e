"""J and F against values worked out by hand on small masks."""
from __future__ import annotations

import numpy as np
import pytest

from rvos_edge.eval import boundary_f, region_similarity, seg2bmap
from rvos_edge.eval.metrics import boundary_tolerance, disk


def dot(shape: tuple[int, int], y: int, x: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y, x] = True
    return m


def box(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_region_similarity():
    empty = np.zeros((6, 6), bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(box((6, 6), 1, 3, 1, 3), empty) == 0.0
    assert region_similarity(empty, box((6, 6), 1, 3, 1, 3)) == 0.0
    # 2x2 boxes one pixel apart horizontally: 2 shared pixels of 6
    assert region_similarity(box((6, 6), 1, 3, 1, 3), box((6, 6), 1, 3, 2, 4)) == pytest.approx(2 / 6)
    # 20x20 square shifted by one pixel: 380 shared of 420
    assert region_similarity(box((100, 100), 20, 40, 20, 40), box((100, 100), 20, 40, 21, 41)) == pytest.approx(380 / 420)
    with pytest.raises(ValueError):
        region_similarity(empty, np.zeros((6, 7), bool))


def test_seg2bmap_of_a_dot_and_a_box():
    # a pixel differs from its right / lower / lower-right neighbour: the dot itself and the three
    # pixels above-left of it whose neighbour it is
    b = seg2bmap(dot((5, 5), 2, 2))
    assert sorted(zip(*np.nonzero(b))) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # a 2x2 box at rows 1-2, cols 1-2 of a 4x4 image, pixel by pixel: the 3x3 ring from (0,0) to (2,2)
    b = seg2bmap(box((4, 4), 1, 3, 1, 3))
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], bool)
    assert (b == expected).all()
    # last row and column: only the right (last row) or lower (last column) neighbour counts
    m = np.zeros((3, 3), bool)
    m[2, 0] = m[0, 2] = True
    # (0,1): right is 1; (0,2): 1 vs 0 below; (1,0): 0 vs 1 below; (2,0): 1 vs 0 right; (1,2): 0 vs 0 below
    assert sorted(zip(*np.nonzero(seg2bmap(m)))) == [(0, 1), (0, 2), (1, 0), (2, 0)]


def test_tolerance_radius_and_disk():
    assert boundary_tolerance((10, 10)) == 1        # 0.008 * 14.1 = 0.11 -> 1
    assert boundary_tolerance((100, 100)) == 2      # 0.008 * 141.4 = 1.13 -> 2
    assert boundary_tolerance((200, 200)) == 3      # 0.008 * 282.8 = 2.26 -> 3
    assert boundary_tolerance((480, 854)) == 8      # 0.008 * 979.7 = 7.84 -> 8 (DAVIS 480p)
    assert boundary_tolerance((10, 10), 4) == 4
    assert (disk(1) == np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])).all()
    assert disk(2).sum() == 13


def test_boundary_f_empty_masks():
    empty = np.zeros((10, 10), bool)
    obj = box((10, 10), 2, 5, 2, 5)
    assert boundary_f(empty, empty) == 1.0   # precision = recall = 1
    assert boundary_f(obj, empty) == 0.0     # precision 1, recall 0
    assert boundary_f(empty, obj) == 0.0     # precision 0, recall 1
    assert boundary_f(obj, obj) == 1.0


def test_boundary_f_one_pixel_shifts():
    # 10x10 image: tolerance 1 pixel, a plus-shaped disk.
    # Dot at (4,4): boundary {(3,3),(3,4),(4,3),(4,4)}; dot at (4,5): {(3,4),(3,5),(4,4),(4,5)}:
    # every boundary pixel has one of the other within 1 (4-neighbourhood) -> P = R = 1.
    gt = dot((10, 10), 4, 4)
    assert region_similarity(gt, dot((10, 10), 4, 5)) == 0.0
    assert boundary_f(gt, dot((10, 10), 4, 5)) == 1.0
    # two pixels right: only (3,4) and (4,4) of the ground truth touch the prediction's (3,5), (4,5)
    # -> R = 2/4, and symmetrically P = 2/4 -> F = 0.5
    assert boundary_f(gt, dot((10, 10), 4, 6)) == pytest.approx(0.5)
    # one pixel diagonally: (3,3) of the gt and (5,5) of the prediction are sqrt(2) > 1 from the other
    # boundary -> P = R = 3/4 -> F = 0.75 (a square 3x3 tolerance would give 1)
    assert boundary_f(gt, dot((10, 10), 5, 5)) == pytest.approx(0.75)
    # the same two-pixel shift in a 200x200 image has a 3-pixel tolerance -> F = 1
    assert boundary_f(dot((200, 200), 4, 4), dot((200, 200), 4, 6)) == 1.0
    # an explicit tolerance of 2 pixels (bound_th >= 1) also forgives it
    assert boundary_f(gt, dot((10, 10), 4, 6), bound_th=2) == 1.0


def test_boundary_f_box_shift():
    # A 20x20 square (rows/cols 20..39) in a 100x100 image (tolerance 2) and the same shifted 3 px right.
    # Its boundary map is the 21x21 ring of corners (19,19) and (39,39): 80 pixels.
    gt = box((100, 100), 20, 40, 20, 40)
    pred = box((100, 100), 20, 40, 23, 43)
    assert seg2bmap(gt).sum() == 80
    # The prediction's ring has corners (19,22) and (39,42). Ground-truth ring pixels within 2 of it:
    # top and bottom rows, cols 20..39 (20 each; col 19 is 3 from col 22); right column rows 20, 21,
    # 37, 38 (within 2 of the prediction's top / bottom rows; its right column 42 is 3 away); left
    # column: none. Recall = 44 / 80, and precision the same by symmetry.
    assert boundary_f(gt, pred) == pytest.approx(44 / 80)
