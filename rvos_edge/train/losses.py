"""Mask losses of VLP-RVOS training: Dice (weight 5) + sigmoid focal (weight 2), as in DESIGN.md section 2.

All take logits and targets of one shape [..., H, W] (targets in [0, 1]); the leading
dimensions are independent masks (a frame of a sample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DICE_WEIGHT = 5.0
FOCAL_WEIGHT = 2.0


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Mean over masks of 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits).

    The smoothing term makes an empty target with an empty prediction cost ~0, so frames
    where the object is absent teach the model to predict nothing.
    """
    p = torch.sigmoid(logits).flatten(-2)
    t = targets.flatten(-2)
    dice = (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)
    return (1 - dice).mean()


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Mean over pixels of alpha_t (1 - p_t)^gamma BCE(logits, targets) (Lin et al., RetinaNet),
    with p_t = p for positives and 1 - p for negatives, alpha_t = alpha and 1 - alpha likewise."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * bce).mean()


def mask_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
    """5 Dice + 2 focal, and the parts as floats {"loss", "dice", "focal"} for logging."""
    dice = dice_loss(logits, targets)
    focal = sigmoid_focal_loss(logits, targets)
    loss = DICE_WEIGHT * dice + FOCAL_WEIGHT * focal
    return loss, {"loss": loss.item(), "dice": dice.item(), "focal": focal.item()}
