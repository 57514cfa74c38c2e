"""OpenAI CLIP (ViT variants) with OpenAI's parameter names, and its loader.

The module computes exactly what OpenAI's `clip.model.CLIP` computes for the
same weights (batch-first instead of sequence-first, which changes nothing but
rounding), and exposes the pieces VLP-RVOS hooks into: `VisionTransformer.embed`
(tokens before the first layer), the blocks themselves (`ResidualAttentionBlock`
with its `Attention`), and `ln_post` / `proj`.

    clip = load_openai_clip("ViT-B-16.pt", image_size=352)
    clip.encode_image(x)        # x float [B, 3, S, S], CLIP-normalised -> [B, Ce]
    clip.encode_text(tokens)    # int64 [B, 77] -> [B, Ce]

Only ViT image towers are supported (OpenAI's ResNet CLIPs are refused).
Head counts cannot be read from tensor shapes: the loader takes them from the
safetensors metadata keys `vision_heads` / `text_heads` when present (files the
project writes carry them), from the arguments, or else uses OpenAI's rule
width // 64.
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_edge.errors import UserError
from rvos_edge.model.layers import Attention
from rvos_edge.model.weights import is_safetensors_path, read_safetensors_metadata, read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CLIPArch:
    """The shape of a CLIP ViT, as OpenAI's build_model infers it."""
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    embed_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm block: x + attn(ln_1 x), then x + mlp(ln_2 x). x [B, N, C]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, arch: CLIPArch) -> None:
        super().__init__()
        w, p = arch.vision_width, arch.patch_size
        scale = w ** -0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(arch.grid ** 2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, arch.vision_layers, arch.vision_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, arch.embed_dim))

    def embed(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, S, S] -> tokens [B, 1 + Np, Cv] entering the first block."""
        x = self.conv1(x).flatten(2).transpose(1, 2)                     # [B, Np, Cv]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, S, S] -> image embedding [B, Ce]."""
        x = self.transformer(self.embed(x))
        return self.ln_post(x[:, 0]) @ self.proj


def causal_mask(n: int, device: torch.device | None = None) -> Tensor:
    """Additive [n, n] mask: -inf above the diagonal (CLIP's text attention)."""
    return torch.full((n, n), float("-inf"), device=device).triu(1)


class CLIP(nn.Module):
    def __init__(self, arch: CLIPArch) -> None:
        super().__init__()
        self.arch = arch
        self.visual = VisionTransformer(arch)
        self.transformer = Transformer(arch.text_width, arch.text_layers, arch.text_heads)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(arch.context_length, arch.text_width))
        self.ln_final = nn.LayerNorm(arch.text_width)
        self.text_projection = nn.Parameter(torch.empty(arch.text_width, arch.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_weights()

    def _init_weights(self) -> None:
        """OpenAI's initialisation (used when no weights are loaded: tests, synthetic training)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tower in (self.transformer, self.visual.transformer):
            w, n = tower.width, len(tower.resblocks)
            proj_std, attn_std, fc_std = (w ** -0.5) * ((2 * n) ** -0.5), w ** -0.5, (2 * w) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    def encode_image(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, S, S] -> [B, Ce]."""
        return self.visual(x)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """CLIP BPE ids int64 [B, L] -> [B, Ce] (features at the EOS token, the largest id).

        L is 77, or less: under the causal mask nothing after EOS changes the result, so a
        caller may cut the padding (trim_padding) to save the work on it."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.transformer(x, causal_mask(x.shape[1], x.device))
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def trim_padding(tokens: Tensor) -> Tensor:
    """tokens int64 [B, 77] -> [B, L]: cut after the last EOS (the largest id) of the batch."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


# --- loading -----------------------------------------------------------------------

_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")


def _count_blocks(sd: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def infer_arch(sd: dict[str, Tensor], vision_heads: int | None = None,
               text_heads: int | None = None) -> CLIPArch:
    """The CLIPArch of an OpenAI-format state dict, from its tensor shapes."""
    if "visual.proj" not in sd or "visual.conv1.weight" not in sd:
        if any(k.startswith("visual.layer1.") for k in sd):
            raise UserError("this is a ResNet CLIP; only ViT CLIP weights are supported")
        raise UserError("not an OpenAI-format CLIP state dict (no visual.conv1.weight / visual.proj)")
    needed = ("visual.positional_embedding", "token_embedding.weight", "positional_embedding",
              "ln_final.weight", "text_projection")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise UserError(f"not an OpenAI-format CLIP state dict: missing {', '.join(missing)}")
    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPArch(
        image_size=patch * grid, patch_size=patch,
        vision_width=vision_width, vision_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        vision_heads=vision_heads or max(1, vision_width // 64),
        embed_dim=sd["text_projection"].shape[1],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width, text_layers=_count_blocks(sd, "transformer.resblocks."),
        text_heads=text_heads or max(1, text_width // 64),
    )


def resize_positional_embedding(pos: Tensor, grid: int) -> Tensor:
    """[1 + g*g, C] -> [1 + grid*grid, C]: the patch part resized bicubically, the class token kept."""
    old = round((pos.shape[0] - 1) ** 0.5)
    if old == grid:
        return pos
    patches = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], dim=0)


def clip_from_state_dict(sd: dict[str, Tensor], image_size: int | None = None,
                         vision_heads: int | None = None, text_heads: int | None = None,
                         source: str = "state dict") -> CLIP:
    """Build a CLIP from an OpenAI-format state dict (fp32), resizing the positional embedding to image_size."""
    sd = {k: v for k, v in sd.items() if k not in _IGNORED_KEYS}
    arch = infer_arch(sd, vision_heads, text_heads)
    if image_size is not None and image_size != arch.image_size:
        if image_size % arch.patch_size:
            raise UserError(f"image size {image_size} is not a multiple of the patch size {arch.patch_size}")
        arch = CLIPArch(**{**arch.__dict__, "image_size": image_size})
        sd["visual.positional_embedding"] = resize_positional_embedding(sd["visual.positional_embedding"], arch.grid)
    for name, width, heads in (("vision", arch.vision_width, arch.vision_heads), ("text", arch.text_width, arch.text_heads)):
        if width % heads:
            raise UserError(f"{source}: {name} width {width} is not divisible by {heads} heads")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CLIP(arch).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise UserError(f"{source}: not a CLIP ViT state dict with OpenAI's key names ({what.strip()})")
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise UserError(f"{source}: tensor {k} has shape {list(sd[k].shape)}, expected {list(shape)} "
                            f"for the architecture inferred from the other tensors")
    model = CLIP(arch)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


def load_openai_clip(path: str | os.PathLike, image_size: int | None = None,
                     vision_heads: int | None = None, text_heads: int | None = None) -> CLIP:
    """Read OpenAI-format CLIP weights (TorchScript release archive, .pt state dict or .safetensors).

    Nothing in the file is executed. The architecture comes from the tensor shapes;
    the visual positional embedding is resized bicubically when image_size differs.
    Returns an fp32 CLIP in eval mode.
    """
    sd = read_state_dict(path)
    if is_safetensors_path(path):
        meta = read_safetensors_metadata(path)
        vision_heads = vision_heads or (int(meta["vision_heads"]) if "vision_heads" in meta else None)
        text_heads = text_heads or (int(meta["text_heads"]) if "text_heads" in meta else None)
    return clip_from_state_dict(sd, image_size, vision_heads, text_heads, source=str(path)).eval()
