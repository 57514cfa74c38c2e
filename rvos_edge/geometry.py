"""The geometry of cube-frame attention (DESIGN section 3), torch-free: shared by the kernels and
the analytic FLOP count.

Tokens live on a grid (t, y, x), t < Tc, y < H, x < W. With cube size Mw and shift s,
cube(y, x) = ((y - s) // Mw, (x - s) // Mw) (floor division); query (t, y, x) attends key
(t', y', x') iff t' == t or cube(y', x') == cube(y, x). Border cubes may be partial.
"""
from __future__ import annotations


def cube_offset(cube: int, shift: int) -> int:
    """Rows/columns to pad at the top/left so cubes start on multiples of Mw.

    Padding by p = (Mw - s) % Mw gives (y + p) // Mw == (y - s) // Mw + (1 if s else 0):
    the same grouping as DESIGN's cube(y, x), with non-negative indices.
    """
    return (cube - shift) % cube


def segment_lengths(length: int, cube: int, shift: int) -> list[int]:
    """Sizes of the (possibly partial) cube segments along one axis of `length` cells."""
    first = cube_offset(cube, shift)
    n = -(-(length + first) // cube)
    return [min((i + 1) * cube, length + first) - max(i * cube, first) for i in range(n)]


def allowed_pairs(grid: tuple[int, int, int], cube: int, shift: int) -> int:
    """Number of (query, key) pairs cube-frame attention scores on a (Tc, H, W) grid.

    Every query sees its frame's H*W keys plus its cube's keys in the Tc-1 other frames, so
    pairs = Tc*(H*W)^2 + Tc*(Tc-1)*sum_cubes |cube|^2, and the sum over cubes factorises
    into (sum of squared row-segment lengths) * (sum of squared column-segment lengths).
    For H, W divisible by Mw and shift 0 this is Tc*HW*((Tc-1)*Mw^2 + HW).
    """
    tc, h, w = grid
    rows = sum(n * n for n in segment_lengths(h, cube, shift))
    cols = sum(n * n for n in segment_lengths(w, cube, shift))
    return tc * (h * w) ** 2 + tc * (tc - 1) * rows * cols
