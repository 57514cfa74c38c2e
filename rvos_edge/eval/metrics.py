"""Region similarity J and boundary accuracy F, computed as the DAVIS 2017 toolkit computes them.

    region_similarity(gt, pred)          # J: IoU, 1.0 when both masks are empty
    boundary_f(gt, pred, bound_th=0.008) # F: boundary F-measure with a pixel tolerance

Both take bool [H, W] arrays of the same shape. For F, each mask's boundary map
comes from `seg2bmap`; a boundary pixel of one mask counts as matched when a
boundary pixel of the other lies within a disk of radius ceil(bound_th * image
diagonal) pixels (bound_th >= 1 is taken as the radius itself). Precision is the
matched fraction of the predicted boundary, recall that of the ground truth's;
an empty boundary has precision 1 (prediction) or recall 1 (ground truth), so two
empty masks score 1 and an empty prediction of a non-empty object scores 0.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _check(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(f"masks must be two H x W arrays of one shape, got {gt.shape} and {pred.shape}")
    return gt.astype(bool), pred.astype(bool)


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J = |gt & pred| / |gt | pred|, and 1.0 when both are empty."""
    gt, pred = _check(gt, pred)
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map bool [H, W]: pixels whose value differs from the pixel to their right, below,
    or below-right (outside the image counts as background). In the last row only the right
    neighbour counts, in the last column only the one below, and the bottom-right pixel is never
    a boundary (as in the DAVIS toolkit)."""
    seg = np.asarray(mask, bool)
    right, below, diag = (np.zeros_like(seg) for _ in range(3))
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ right) | (seg ^ below) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ below[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """uint8 [2r+1, 2r+1]: 1 where x^2 + y^2 <= r^2 (the structuring element of the tolerance)."""
    d = np.arange(-radius, radius + 1)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= radius ** 2).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Tolerance radius in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal)."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape))


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """F = 2 P R / (P + R) of the boundaries (module docstring); 0.0 when P + R == 0."""
    gt, pred = _check(gt, pred)
    kernel = disk(boundary_tolerance(gt.shape, bound_th))
    gt_b, pred_b = seg2bmap(gt), seg2bmap(pred)
    n_gt, n_pred = np.count_nonzero(gt_b), np.count_nonzero(pred_b)
    if n_gt == 0 or n_pred == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        gt_near = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
        pred_near = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
        precision = np.count_nonzero(pred_b & gt_near) / n_pred
        recall = np.count_nonzero(gt_b & pred_near) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
