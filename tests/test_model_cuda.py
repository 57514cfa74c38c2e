"""The whole model on CUDA: Triton attention against the decomposed one (marked `gpu`:
`make gpu-check` runs it; skipped without a GPU).

Both impls compute the same CF-MSA and PRTC function (DESIGN.md section 3), so with the
same random weights and inputs, two consecutive clips (the second fed the first's history)
must give the same mask logits and history up to fp32 rounding through the layers.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_frames

from rvos_edge.model import TextFeatures, build_model
from rvos_edge.tokenizer import EOT_TOKEN, SOT_TOKEN

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def random_tokens(batch: int, words: int, seed: int) -> torch.Tensor:
    """[B, 77] rows [SOS, `words` random word ids, EOS, 0 ...] (no tokenizer needed)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, 77, dtype=torch.int64)
    tokens[:, 0], tokens[:, words + 1] = SOT_TOKEN, EOT_TOKEN
    tokens[:, 1:words + 1] = torch.randint(1, SOT_TOKEN, (batch, words), generator=g)
    return tokens


def two_clips(model, impl: str, frames: torch.Tensor, text: TextFeatures) -> list[torch.Tensor]:
    """[logits 1, history 1, logits 2, history 2] for frames split into two clips."""
    model.attention_impl = impl
    cfg, b = model.config, frames.shape[0]
    history = torch.zeros(b, cfg.history_prompts, cfg.embed_dim, device="cuda")
    outs = []
    with torch.inference_mode():
        for clip, has in ((frames[:, :cfg.clip_len], 0.0), (frames[:, cfg.clip_len:], 1.0)):
            logits, history = model.forward_clip(clip, text, history, torch.full((b, 1), has, device="cuda"))
            outs += [logits, history]
    return outs


@pytest.mark.parametrize("preset", ["demo", "vit-b16"])
def test_triton_model_matches_decomposed(preset):
    model = build_model(preset, seed=0).fold_prompts().eval().cuda()
    cfg = model.config
    frames = make_frames(2, 2 * cfg.clip_len, cfg.image_size, seed=1).cuda()
    with torch.inference_mode():
        text = model.encode_text(random_tokens(2, 6, seed=2).cuda())
    expected = two_clips(model, "decomposed", frames, text)
    got = two_clips(model, "triton", frames, text)
    for name, e, g in zip(("logits 1", "history 1", "logits 2", "history 2"), expected, got):
        scale = e.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(g, e, atol=1e-4 * max(1.0, scale), rtol=1e-4, msg=lambda m: f"{preset} {name}: {m}")
    for e, g in ((expected[0], got[0]), (expected[2], got[2])):
        clear = e.abs() > 1e-3 * e.abs().max()            # where the sign is not down to rounding
        assert torch.equal(e[clear] > 0, g[clear] > 0)
