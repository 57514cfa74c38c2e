"""Mask head: STR output + shallow features -> mask logits at 4x the patch grid."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rvos_edge.config import ModelConfig


def _conv_gn(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(8, cout)]


class MaskHead(nn.Module):
    """FPN-style segmentor.

    stem: 1x1 conv + GN over the STR output. Then at scales h, 2h, 4h (bilinear x2
    between them): add a lateral from one shallow feature (the deepest at h), then
    3x3 conv + GN + ReLU; finally a 1x1 conv to one channel.
    Channels: C at h, C at 2h going to C/2, C/2 at 4h going to C/4 (so the 4h
    convolutions stay cheap). A lateral is a 1x1 adapter Cv -> channels, brought to
    2h / 4h by a transposed conv (kernel = stride = 2 / 4) after the adapter,
    which is the cheaper order.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, cv = cfg.str_width, cfg.vision_width
        ins, outs = (c, c, c // 2), (c, c // 2, c // 4)
        self.stem = nn.Sequential(*_conv_gn(c, c, 1))
        self.adapters = nn.ModuleList(nn.Conv2d(cv, ci, 1) for ci in ins)
        self.lifts = nn.ModuleList(
            [nn.Identity()] + [nn.ConvTranspose2d(ci, ci, 2 ** i, stride=2 ** i) for i, ci in enumerate(ins) if i])
        self.convs = nn.ModuleList(nn.Sequential(*_conv_gn(ci, co, 3), nn.ReLU()) for ci, co in zip(ins, outs))
        self.out = nn.Conv2d(outs[-1], 1, 1)

    def forward(self, x: Tensor, shallow: list[Tensor]) -> Tensor:
        """x [N, C, h, w]; shallow: 3 x [N, Cv, h, w], shallowest first -> logits [N, 1, 4h, 4w]."""
        x = self.stem(x)
        for i, feature in enumerate(reversed(shallow)):
            if i:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.convs[i](x + self.lifts[i](self.adapters[i](feature)))
        return self.out(x)
