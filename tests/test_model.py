"""VLP-RVOS model: shapes, history, prompts, frozen CLIP, parameter counts (DESIGN section 2)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_frames, make_tokens

from rvos_edge.config import ModelConfig, get_config
from rvos_edge.tokenizer import tokenize

EXPRS = ["the red circle moving left", "a square on the right"]


def run(model, frames, tokens, history=None, has_history=None):
    with torch.no_grad():
        text = model.encode_text(tokens)
        b = frames.shape[0]
        cfg = model.config
        if history is None:
            history = torch.zeros(b, cfg.history_prompts, cfg.embed_dim)
        if has_history is None:
            has_history = torch.zeros(b, 1)
        return model.forward_clip(frames, text, history, has_history)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("tc", [1, 3, 5])
def test_shapes(tiny_model, b, tc):
    cfg = tiny_model.config
    logits, history = run(tiny_model, make_frames(b, tc, cfg.image_size), make_tokens(EXPRS[:b], cfg.language_prompts))
    assert logits.shape == (b, tc, 4 * cfg.grid, 4 * cfg.grid) == (b, tc, 16, 16)
    assert history.shape == (b, cfg.history_prompts, cfg.embed_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(history).all()


def test_text_features(tiny_model):
    cfg = tiny_model.config
    tokens = make_tokens(EXPRS, cfg.language_prompts)
    with torch.no_grad():
        text = tiny_model.encode_text(tokens)
    assert text.feats.shape == (2, 77, cfg.embed_dim) and text.global_.shape == (2, cfg.embed_dim)
    eos = tokens.argmax(1) + cfg.language_prompts          # position of EOS once the prompts are inserted
    for i in range(2):
        assert text.mask[i].tolist() == [j <= eos[i] for j in range(77)]
        assert torch.equal(text.global_[i], text.feats[i, eos[i]])


def test_plain_tokens_are_cut_like_prompt_tokens(tiny_model):
    long = " ".join(["cat"] * 90)
    m = tiny_model.config.language_prompts
    with torch.no_grad():
        a = tiny_model.encode_text(torch.from_numpy(tokenize([long])))
        b = tiny_model.encode_text(make_tokens([long], m))
    assert torch.equal(a.feats, b.feats) and torch.equal(a.mask, b.mask)


def test_batch_items_are_independent(tiny_model):
    cfg = tiny_model.config
    frames, tokens = make_frames(2, 3, cfg.image_size), make_tokens(EXPRS, cfg.language_prompts)
    history, has = torch.randn(2, cfg.history_prompts, cfg.embed_dim), torch.tensor([[1.0], [0.0]])
    both = run(tiny_model, frames, tokens, history, has)
    for i in range(2):
        one = run(tiny_model, frames[i:i + 1], tokens[i:i + 1], history[i:i + 1], has[i:i + 1])
        assert torch.allclose(one[0], both[0][i:i + 1], atol=1e-5)
        assert torch.allclose(one[1], both[1][i:i + 1], atol=1e-5)


def test_frames_of_a_clip_interact(tiny_model):
    """Temporal prompts (PRTC) and CF-MSA let frame 2 change frame 0's mask."""
    cfg = tiny_model.config
    frames, tokens = make_frames(1, 3, cfg.image_size), make_tokens(EXPRS[:1], cfg.language_prompts)
    changed = frames.clone()
    changed[:, 2] = 255 - changed[:, 2]
    assert not torch.allclose(run(tiny_model, frames, tokens)[0][:, 0], run(tiny_model, changed, tokens)[0][:, 0])


def test_history_is_used_only_when_present(tiny_model):
    cfg = tiny_model.config
    frames, tokens = make_frames(1, 3, cfg.image_size), make_tokens(EXPRS[:1], cfg.language_prompts)
    h1, h2 = torch.randn(2, 1, cfg.history_prompts, cfg.embed_dim)
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    assert not torch.allclose(run(tiny_model, frames, tokens, h1, one)[0], run(tiny_model, frames, tokens, h2, one)[0])
    a, b = run(tiny_model, frames, tokens, h1, zero), run(tiny_model, frames, tokens, h2, zero)
    assert torch.equal(a[0], b[0])


def test_history_out_is_a_fifo_of_pooled_targets(tiny_model):
    """history_out = last m_h rows of [history; h_1..h_Tc]; for Tc >= m_h the history is gone."""
    cfg = tiny_model.config
    m_h = cfg.history_prompts
    tokens = make_tokens(EXPRS[:1], cfg.language_prompts)
    history = torch.randn(1, m_h, cfg.embed_dim)
    _, out1 = run(tiny_model, make_frames(1, 1, cfg.image_size), tokens, history, torch.ones(1, 1))
    assert torch.equal(out1[:, :m_h - 1], history[:, 1:])          # one new row pushed, the oldest dropped
    frames = make_frames(1, 3, cfg.image_size, seed=5)
    with torch.no_grad():
        text = tiny_model.encode_text(tokens)
        logits, out3 = tiny_model.forward_clip(frames, text, history, torch.ones(1, 1))
        visual, _ = tiny_model.encode_frames(frames, text, history, torch.ones(1, 1))
    # independent pooled vector of the last frame: weights = 4x4 block means of sigmoid(logits)
    p = torch.sigmoid(logits[0, 2]).reshape(cfg.grid, 4, cfg.grid, 4).mean((1, 3)).reshape(-1, 1)
    want = (p * visual[0, 2, 1:]).sum(0) / (p.sum() + 1e-6)
    assert torch.allclose(out3[0, -1], want, atol=1e-5)


def test_folding_prompts_keeps_the_output():
    from rvos_edge.model import build_model
    model = build_model("tiny", seed=3).eval()
    cfg = model.config
    frames, tokens = make_frames(1, 3, cfg.image_size), make_tokens(EXPRS[:1], cfg.language_prompts)
    before = run(model, frames, tokens)
    model.fold_prompts()
    assert model.prompts.folded_vision.shape == (cfg.vision_layers, cfg.vision_prompts, cfg.vision_width)
    after = run(model, frames, tokens)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert "prompts.folded_vision" not in model.state_dict()


def _attn(c):
    return 4 * c * c + 4 * c


def _ffn(c, r=4.0):
    h = int(c * r)
    return 2 * c * h + h + c


def expected_learnable(cfg: ModelConfig) -> dict[str, int]:
    """Learnable parameters per module, counted by hand from DESIGN section 2 (PRTC: none)."""
    cv, ce, c, dp, lv = cfg.vision_width, cfg.embed_dim, cfg.str_width, cfg.prompt_width, cfg.vision_layers
    head_in, head_out = (c, c, c // 2), (c, c // 2, c // 4)
    return {
        "prompts": cfg.vision_prompts * dp + 4 * dp + _attn(dp) + _ffn(dp, cfg.mlp_ratio)
        + dp * cfg.text_width + cfg.text_width + dp * lv * cv + lv * cv,
        "history_prompts": lv * (ce * cv + cv) + lv * cfg.history_prompts * cv,
        "temporal_prompts": cfg.temporal_prompts * cv,
        "text_to_vision": ce * cv + cv,
        "vlff": 2 * _attn(ce) + ce + (ce + 1) * c + c,
        "reasoner": 3 * cv * c + c + ce * c + c + cfg.str_blocks * (8 * c + 2 * _attn(c) + 2 * _ffn(c, cfg.mlp_ratio)),
        "head": c * c + c + 2 * c + sum(cv * i + i for i in head_in)
        + sum(i * i * 4 ** k + i for k, i in ((1, head_in[1]), (2, head_in[2])))
        + sum(i * o * 9 + o + 2 * o for i, o in zip(head_in, head_out)) + head_out[-1] + 1,
    }


def expected_clip(cfg: ModelConfig) -> int:
    def tower(w, layers):
        return layers * (_attn(w) + 4 * w + 8 * w * w + 5 * w)
    vis = cfg.vision_width
    return (3 * vis * cfg.patch_size ** 2 + vis + (cfg.num_patches + 1) * vis + 4 * vis
            + tower(vis, cfg.vision_layers) + vis * cfg.embed_dim
            + tower(cfg.text_width, cfg.text_layers) + cfg.vocab_size * cfg.text_width
            + cfg.context_length * cfg.text_width + 2 * cfg.text_width + cfg.text_width * cfg.embed_dim + 1)


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_parameter_counts(preset):
    from rvos_edge.model import VLPRVOS
    cfg = get_config(preset)
    with torch.device("meta"):
        model = VLPRVOS(cfg)
    counts = {name: sum(p.numel() for p in mod.parameters()) if isinstance(mod, torch.nn.Module) else mod.numel()
              for name, mod in [(n, getattr(model, n)) for n in expected_learnable(cfg)]}
    assert counts == expected_learnable(cfg)
    assert model.temporal_prompts.numel() == cfg.temporal_prompts * cfg.vision_width
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert learnable == sum(expected_learnable(cfg).values())     # nothing else learns: PRTC adds none
    assert frozen == expected_clip(cfg)


def test_clip_is_frozen_and_gets_no_gradient():
    from rvos_edge.model import build_model
    model = build_model("tiny", seed=1)
    cfg = model.config
    logits, history = model(make_frames(1, 2, cfg.image_size), make_tokens(EXPRS[:1], cfg.language_prompts),
                            torch.randn(1, cfg.history_prompts, cfg.embed_dim))
    (logits.square().mean() + history.square().mean()).backward()
    for name, p in model.named_parameters():
        if name.startswith("clip."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None, name
    assert model.temporal_prompts.grad.abs().sum() > 0
    assert model.history_prompts.proj[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("switch", ["use_temporal_prompts", "use_history"])
def test_ablations(switch):
    """Switching a component off removes its parameters and its effect."""
    from rvos_edge.model import build_model
    cfg = get_config("tiny").replace(**{switch: False})
    model = build_model(cfg, seed=0).eval()
    full = sum(expected_learnable(get_config("tiny")).values())
    removed = (cfg.temporal_prompts * cfg.vision_width if switch == "use_temporal_prompts"
               else expected_learnable(cfg)["history_prompts"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == full - removed
    frames, tokens = make_frames(1, 3, cfg.image_size), make_tokens(EXPRS[:1], cfg.language_prompts)
    h1, h2 = torch.randn(2, 1, cfg.history_prompts, cfg.embed_dim)
    a = run(model, frames, tokens, h1, torch.ones(1, 1))
    b = run(model, frames, tokens, h2, torch.ones(1, 1))
    assert a[0].shape == (1, 3, 16, 16)
    assert torch.equal(a[0], b[0]) == (switch == "use_history")
