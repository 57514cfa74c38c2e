"""CLIP loader: OpenAI key names in three file forms, parity with an OpenAI-layout reference."""
from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rvos_edge.errors import UserError
from rvos_edge.model.clip import load_openai_clip

# --- an independent reference written the way OpenAI's clip/model.py computes --------
# (sequence-first layout, torch.nn.MultiheadAttention, QuickGELU), so that parameter
# names are OpenAI's and nothing is shared with rvos_edge.model.clip.

class RefBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.Identity()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:    # x [N, B, C]
        mask = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu(1) if self.causal else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class RefTower(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool):
        super().__init__()
        self.resblocks = nn.Sequential(*[RefBlock(width, heads, causal) for _ in range(layers)])


class RefVisual(nn.Module):
    def __init__(self, size: int, patch: int, width: int, layers: int, heads: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = RefTower(width, layers, heads, causal=False)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width ** -0.5)


class RefCLIP(nn.Module):
    def __init__(self, size=64, patch=16, vw=64, vl=2, vh=2, embed=32, tw=48, tl=2, th=3, vocab=49408, ctx=77):
        super().__init__()
        self.visual = RefVisual(size, patch, vw, vl, vh, embed)
        self.transformer = RefTower(tw, tl, th, causal=True)
        self.token_embedding = nn.Embedding(vocab, tw)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, tw) * 0.01)
        self.ln_final = nn.LayerNorm(tw)
        self.text_projection = nn.Parameter(torch.randn(tw, embed) * tw ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        for p in self.parameters():      # non-trivial LayerNorm affine parameters too
            if p.dim() == 1 and p is not self.visual.class_embedding:
                p.data.add_(0.1 * torch.randn_like(p))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(image).reshape(image.shape[0], v.conv1.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = v.ln_pre(x + v.positional_embedding)
        x = v.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        return v.ln_post(x[:, 0, :]) @ v.proj

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image), self.encode_text(text)


@pytest.fixture(scope="module")
def ref() -> RefCLIP:
    torch.manual_seed(0)
    return RefCLIP().eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 64, 64, generator=g)
    text = torch.zeros(2, 77, dtype=torch.long)
    text[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    text[1, :6] = torch.tensor([49406, 518, 2368, 14721, 269, 49407])
    return image, text


def _write(ref: RefCLIP, tmp_path, form: str) -> str:
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    if form == "safetensors":
        path = str(tmp_path / "clip.safetensors")
        save_file(sd, path, metadata={"vision_heads": "2", "text_heads": "3"})
    elif form == "state_dict":
        path = str(tmp_path / "clip.pt")
        torch.save(sd, path)
    else:  # an OpenAI-style TorchScript release archive, with its extra tensor attributes
        path = str(tmp_path / "ViT-test.pt")
        ref.register_buffer("input_resolution", torch.tensor(64))
        try:
            torch.jit.save(torch.jit.trace(ref, _inputs()), path)
        finally:
            del ref._buffers["input_resolution"]
    return path


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("form", ["safetensors", "state_dict", "torchscript"])
def test_loader_matches_openai_reference(ref, tmp_path, form):
    path = _write(ref, tmp_path, form)
    clip = load_openai_clip(path, vision_heads=2, text_heads=3) if form != "safetensors" else load_openai_clip(path)
    assert (clip.arch.vision_width, clip.arch.vision_layers, clip.arch.text_width, clip.arch.embed_dim) == (64, 2, 48, 32)
    assert (clip.arch.vision_heads, clip.arch.text_heads, clip.arch.image_size) == (2, 3, 64)
    image, text = _inputs()
    with torch.no_grad():
        want_image, want_text = ref(image, text)
        assert (clip.encode_image(image) - want_image).abs().max() <= 1e-5
        assert (clip.encode_text(text) - want_text).abs().max() <= 1e-5


def test_heads_default_to_openai_rule(ref, tmp_path):
    clip = load_openai_clip(_write(ref, tmp_path, "state_dict"))
    assert (clip.arch.vision_heads, clip.arch.text_heads) == (1, 1)    # width // 64, at least one


def test_positional_embedding_resized_bicubically(ref, tmp_path):
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    pos = sd["visual.positional_embedding"]                       # [1 + 4*4, 64]
    pos[1:] = torch.arange(64, dtype=torch.float32)[None, :]       # constant over the grid, per channel
    path = str(tmp_path / "clip.pt")
    torch.save(sd, path)
    clip = load_openai_clip(path, image_size=128, vision_heads=2, text_heads=3)
    new = clip.visual.positional_embedding.detach()
    assert new.shape == (1 + 8 * 8, 64)
    assert torch.equal(new[0], pos[0])                            # class token kept
    assert torch.allclose(new[1:], pos[1:2].expand(64, -1), atol=1e-5)   # a constant stays constant
    assert clip.encode_image(torch.randn(1, 3, 128, 128)).shape == (1, 32)


def test_wrong_shape_is_rejected_with_the_tensor_name(ref, tmp_path):
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    sd["visual.transformer.resblocks.1.attn.in_proj_weight"] = torch.zeros(100, 64)
    path = str(tmp_path / "bad.safetensors")
    save_file(sd, path)
    with pytest.raises(UserError, match=r"visual\.transformer\.resblocks\.1\.attn\.in_proj_weight.*\[100, 64\]"):
        load_openai_clip(path)


def test_not_a_clip_file(tmp_path):
    path = str(tmp_path / "other.safetensors")
    save_file({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not an OpenAI-format CLIP"):
        load_openai_clip(path)


def test_pickled_object_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "evil.pt")
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(UserError):
        load_openai_clip(path)
    assert not marker.exists()
