"""Training: losses against hand-computed values, one step lowers the loss, resumable runs, synthetic CLIP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rvos_edge.cli import main
from rvos_edge.data import HELDOUT_SEED
from rvos_edge.data.synthetic import SceneObject
from rvos_edge.errors import UserError
from rvos_edge.model import build_model, load_checkpoint
from rvos_edge.model.clip import load_openai_clip
from rvos_edge.train import dice_loss, mask_loss, sigmoid_focal_loss, train_step
from rvos_edge.train.clip_pretrain import CLIPTrainOptions, caption, save_clip, train_clip
from rvos_edge.train.rvos import RVOSTrainOptions, TrainData, make_optimizer, train_rvos, two_clip_logits, warmup_cosine
from rvos_edge.train.state import read_state


def test_dice_and_focal_by_hand():
    logits = torch.zeros(1, 1, 2)                 # p = 0.5 on both pixels
    target = torch.tensor([[[1.0, 0.0]]])
    # dice: 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice_loss(logits, target).item() == pytest.approx(1 / 3)
    # focal: p_t = 0.5 on both, (1 - p_t)^2 = 1/4, BCE = ln 2, alpha_t = 0.25 and 0.75 -> mean 0.125 ln 2
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(0.125 * math.log(2))
    loss, parts = mask_loss(logits, target)
    assert loss.item() == pytest.approx(5 / 3 + 2 * 0.125 * math.log(2))
    assert parts["dice"] == pytest.approx(1 / 3)
    # confident and right: both ~0; an absent object predicted absent costs ~0 thanks to the smoothing
    sure = torch.tensor([[[20.0, -20.0]]])
    assert dice_loss(sure, target).item() < 1e-6 and sigmoid_focal_loss(sure, target).item() < 1e-12
    assert dice_loss(torch.full((1, 2, 2), -20.0), torch.zeros(1, 2, 2)).item() < 1e-6
    # mean over masks: a perfect mask and the p = 0.5 one average to 1/6
    both = dice_loss(torch.cat([sure, logits]), torch.cat([target, target]))
    assert both.item() == pytest.approx(1 / 6, abs=1e-6)


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.1 + 0.9 * 0.5)   # half way: cos = 0
    assert warmup_cosine(100, 100, 10, 1.0) == pytest.approx(0.1)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("tiny", seed=0)
    batch = TrainData("synthetic", 0).batch(0, 2, model.config)
    assert batch.frames.shape == (2, 6, 64, 64, 3) and batch.masks.shape == (2, 6, 64, 64)
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    prompts_before = model.temporal_prompts.detach().clone()

    def loss() -> float:
        with torch.no_grad():
            return mask_loss(two_clip_logits(model, batch.frames, batch.tokens), batch.masks)[0].item()

    before = loss()
    parts = train_step(model, make_optimizer(model, 1e-3, 5e-4), batch)
    assert parts["loss"] == pytest.approx(before, rel=1e-5)
    assert loss() < before - 1e-3
    assert all(torch.equal(v, model.clip.state_dict()[k]) for k, v in clip_before.items())   # CLIP frozen
    assert not torch.equal(prompts_before, model.temporal_prompts)


def test_second_clip_gets_the_first_clips_history():
    model = build_model("tiny", seed=0)
    batch = TrainData("synthetic", 0).batch(0, 1, model.config)
    frames = batch.frames.clone()
    with torch.no_grad():
        a = two_clip_logits(model, frames, batch.tokens)
        frames[:, :3] = 0                             # change only the first clip
        b = two_clip_logits(model, frames, batch.tokens)
    assert not torch.allclose(a[:, 3:], b[:, 3:])      # the second clip's masks depend on it


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    common = dict(preset="tiny", steps=3, batch_size=1, warmup=1, lr=1e-3, log_every=1)
    train_rvos(RVOSTrainOptions(out=str(tmp_path / "a"), save_every=3, **common), progress=False)
    train_rvos(RVOSTrainOptions(out=str(tmp_path / "b"), save_every=1, **{**common, "steps": 2}), progress=False)
    with pytest.raises(UserError, match="--resume"):
        train_rvos(RVOSTrainOptions(out=str(tmp_path / "b"), save_every=1, **common), progress=False)
    summary = train_rvos(RVOSTrainOptions(out=str(tmp_path / "b"), save_every=1, resume=True, **common), progress=False)
    assert summary["resumed_from"] == 2
    a, b = (load_checkpoint(tmp_path / d / "model.safetensors").state_dict() for d in "ab")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    legs = read_state(tmp_path / "b", "rvos")["legs"]          # each command's part of the run, in order
    assert [(x["from"], x["to"], x["options"]["steps"]) for x in legs] == [(0, 2, 2), (2, 3, 3)]
    assert all(x["seconds"] > 0 for x in legs)
    (tmp_path / "b" / "model.safetensors").write_bytes(b"cut short")
    with pytest.raises(UserError, match="interrupted"):
        read_state(tmp_path / "b", "rvos")


def test_state_without_legs_resumes_as_one_leg(tmp_path):
    """A run saved before legs were recorded: its one leg gets the options and the log's wall time."""
    common = dict(preset="tiny", batch_size=1, warmup=1, lr=1e-3, log_every=1, save_every=1)
    out = tmp_path / "run"
    train_rvos(RVOSTrainOptions(out=str(out), steps=1, **common), progress=False)
    state = json.loads((out / "train_state.json").read_text())
    del state["legs"]
    (out / "train_state.json").write_text(json.dumps(state))
    logged = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["seconds"]
    train_rvos(RVOSTrainOptions(out=str(out), steps=2, resume=True, **common), progress=False)
    first, second = read_state(out, "rvos")["legs"]
    assert (first["from"], first["to"], first["options"]["steps"]) == (0, 1, 1)
    assert first["seconds"] == pytest.approx(logged, abs=0.05)   # legs keep 0.1 s
    assert (second["from"], second["to"], second["options"]["steps"]) == (1, 2, 2)


def test_heldout_seed_is_refused(tmp_path):
    with pytest.raises(UserError, match="held-out"):
        TrainData("synthetic", HELDOUT_SEED)
    with pytest.raises(UserError, match="held-out"):
        TrainData(f"synthetic:{HELDOUT_SEED}:10", 0)
    with pytest.raises(UserError, match="held-out"):
        train_clip(CLIPTrainOptions(out=str(tmp_path), seed=HELDOUT_SEED))


def test_caption_names_the_visible_objects():
    labels = np.zeros((128, 128), np.uint8)
    labels[10:20, 10:20] = 1          # 100 pixels: named
    labels[50:52, 50:60] = 2          # 20 pixels: too few to be named
    objects = [SceneObject(1, "circle", "red", "big", 20.0, "still", np.array([[15.0, 15.0]])),
               SceneObject(2, "square", "blue", "small", 12.0, "still", np.array([[55.0, 51.0]]))]
    for seed in range(8):
        text = caption(objects, labels, np.random.default_rng(seed))
        assert "red circle" in text and "blue" not in text and "square" not in text
        assert "left" in text or text.endswith("red circle")


def _mentions(text: str) -> list[dict[str, str | None]]:
    """"a picture of a red circle on the left and a big blue square" -> each mention's attributes."""
    from rvos_edge.data.synthetic import SHAPES

    for prefix in ("a picture of ", "a scene with "):
        text = text.removeprefix(prefix)
    out = []
    for part in text.replace(" and ", ", ").split(", "):
        words = part.split()[1:]                                   # drop the article
        k = next(i for i, w in enumerate(words) if w in SHAPES)
        out.append({"size": words[0] if k == 2 else None, "colour": words[k - 1], "shape": words[k],
                    "place": " ".join(words[k + 1:]) or None})
    return out


def test_hard_negatives_change_one_attribute_of_one_object_into_a_false_caption():
    from rvos_edge.train.clip_pretrain import pairs

    _, captions, negatives = pairs(5, 0, 40, 64, hard_negatives=3)
    assert len(negatives) == 3 * len(captions)
    changed = set()
    for i, true in enumerate(captions):
        for negative in negatives[3 * i: 3 * i + 3]:
            assert negative != true
            if true == "an empty background":
                continue
            truth, wrong = _mentions(true), _mentions(negative)
            diffs = [(a, b) for a, b in zip(truth, wrong) if a != b]
            assert len(wrong) == len(truth) and len(diffs) == 1      # one object
            a, b = diffs[0]
            keys = [k for k in a if a[k] != b[k]]
            assert len(keys) == 1 and a[keys[0]] is not None         # one attribute it named
            if keys[0] in ("shape", "colour"):                       # into what no visible object is
                assert (b["colour"], b["shape"]) not in {(m["colour"], m["shape"]) for m in truth}
            if keys[0] == "size":                                    # no twin that could be of that size
                assert sum((m["colour"], m["shape"]) == (a["colour"], a["shape"]) for m in truth) == 1
            changed.add(keys[0])
    assert changed == {"shape", "colour", "size", "place"}


def test_hard_negatives_join_only_the_image_to_text_side_of_the_loss():
    from rvos_edge.tokenizer import tokenize
    from rvos_edge.train.clip_pretrain import contrastive_loss, normalise

    torch.manual_seed(0)
    clip = build_model("tiny").clip.eval()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    tokens = torch.from_numpy(tokenize(["a red circle", "a blue square", "a green cross"]))
    negatives = torch.from_numpy(tokenize(["a red square", "a blue circle"]))
    with torch.no_grad():
        plain, _ = contrastive_loss(clip, images, tokens)
        hard, _ = contrastive_loss(clip, images, tokens, negatives)
        img = torch.nn.functional.normalize(clip.encode_image(normalise(images)), dim=-1)
        txt = torch.nn.functional.normalize(clip.encode_text(torch.cat([tokens, negatives])), dim=-1)
    logits = (clip.logit_scale.exp().clamp(max=100) * img @ txt.T).double()
    # by hand: image i's caption among all 5 texts; text j's image among the 3 images
    image_side = -(logits.diagonal() - logits.logsumexp(1)).mean()
    text_side = -(logits[:, :3].diagonal() - logits[:, :3].logsumexp(0)).mean()
    assert hard.item() == pytest.approx(((image_side + text_side) / 2).item(), rel=1e-4)
    assert hard.item() > plain.item()


def test_sincos_positions_by_hand_and_from_scratch_pretraining_starts_from_them(tmp_path):
    import math

    from rvos_edge.train.clip_pretrain import sincos_positions

    pos = sincos_positions(4, 16)                      # half 8: frequencies 1, 0.1, 0.01, 0.001
    assert pos.shape == (17, 16) and torch.count_nonzero(pos[0]) == 0
    y, x = 2, 3
    row = pos[1 + y * 4 + x]                           # patches row-major, after the class token
    assert row[0].item() == pytest.approx(math.sin(y)) and row[1].item() == pytest.approx(math.sin(y * 0.1))
    assert row[4].item() == pytest.approx(math.cos(y)) and row[8].item() == pytest.approx(math.sin(x))
    assert row[12].item() == pytest.approx(math.cos(x)) and row[13].item() == pytest.approx(math.cos(x * 0.1))
    train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=1, batch_size=2, warmup=1, lr=1e-9),
               progress=False)
    clip = load_openai_clip(tmp_path / "clip.safetensors")
    torch.testing.assert_close(clip.visual.positional_embedding, sincos_positions(clip.arch.grid, 64), atol=1e-5, rtol=0)
    train_clip(CLIPTrainOptions(out=str(tmp_path / "openai"), preset="tiny", steps=1, batch_size=2, warmup=1,
                                lr=1e-9, positions="openai"), progress=False)
    pos = load_openai_clip(tmp_path / "openai" / "clip.safetensors").visual.positional_embedding
    assert pos.std().item() == pytest.approx(64 ** -0.5, rel=0.2)   # OpenAI's start: randn / sqrt(width)


def test_patch_shuffle_cosine_is_one_only_for_a_tower_blind_to_position():
    from rvos_edge.config import get_config
    from rvos_edge.train.clip_pretrain import patch_shuffle_cosine, sincos_positions

    torch.manual_seed(0)
    cfg = get_config("tiny")
    clip = build_model("tiny").clip
    with torch.no_grad():
        clip.visual.positional_embedding.copy_(sincos_positions(clip.arch.grid, clip.arch.vision_width))
        where = patch_shuffle_cosine(clip, cfg, count=8)
        clip.visual.positional_embedding[1:] = clip.visual.positional_embedding[1]   # every patch alike
        blind = patch_shuffle_cosine(clip, cfg, count=8)
    assert blind == pytest.approx(1.0, abs=1e-5)      # attention and the class token's pooling ignore order
    assert where < 1 - 1e-4                         # an untrained tower: mostly its class token, but not blind


def test_text_encoder_ignores_what_follows_eos():
    from rvos_edge.model.clip import trim_padding
    from rvos_edge.tokenizer import tokenize

    torch.manual_seed(0)
    clip = build_model("tiny").clip
    tokens = torch.from_numpy(tokenize(["a red circle", "a picture of a big blue square on the left"]))
    trimmed = trim_padding(tokens)
    assert trimmed.shape[1] == int((tokens[1] > 0).sum()) < 77
    torch.testing.assert_close(clip.encode_text(trimmed), clip.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_synthetic_clip_round_trip_and_training(tmp_path):
    summary = train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=2, batch_size=4, warmup=1),
                         progress=False)
    clip = load_openai_clip(tmp_path / "clip.safetensors")
    assert (clip.arch.vision_heads, clip.arch.text_heads, clip.arch.vision_width) == (2, 2, 64)
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and -1.0 <= summary["patch_shuffle_cosine"] <= 1.0 + 1e-6
    probes = summary["attribute_accuracy"]
    assert set(probes) == {"shape", "colour", "place", "per_patch", "shape_chance", "colour_chance", "place_chance",
                           "per_patch_chance"}
    assert 1 / 5 <= probes["shape_chance"] <= 1 / 2 and 1 / 6 <= probes["colour_chance"] <= 1 / 2
    assert probes["place_chance"] == pytest.approx(1 / 5)
    # the file feeds VLP-RVOS like OpenAI's weights would
    model = build_model("tiny", tmp_path / "clip.safetensors")
    assert torch.equal(model.clip.visual.proj, clip.visual.proj)
    save_clip(clip, tmp_path / "again.safetensors")
    again = load_openai_clip(tmp_path / "again.safetensors")
    tokens = torch.zeros(1, 77, dtype=torch.int64)
    tokens[0, :2] = torch.tensor([49406, 49407])
    assert torch.equal(again.encode_text(tokens), clip.encode_text(tokens))


def test_train_command(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--stage", "rvos", "--preset", "tiny", "--out", str(out), "--steps", "1", "--batch-size", "1"]
    assert main(args) == 0
    assert "trained tiny to" in capsys.readouterr().out
    assert load_checkpoint(out / "model.safetensors").config.name == "tiny"
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--hard-negatives", "2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_world_token_ids_cover_every_expression_and_caption():
    from rvos_edge.data import generate
    from rvos_edge.tokenizer import tokenize
    from rvos_edge.train.clip_pretrain import pairs, world_token_ids

    kept = set(world_token_ids().tolist())
    expressions = [generate(3, i).expression for i in range(120)]
    _, captions, negatives = pairs(3, 0, 120, 64, hard_negatives=2)
    used = set(np.unique(tokenize(expressions + captions + negatives)).tolist())
    assert used <= kept and {0, 49406, 49407} <= kept
    assert len(kept) < 200          # a small lexicon, not the whole BPE vocabulary


def test_clip_pretraining_keeps_unused_token_rows_zero(tmp_path):
    from rvos_edge.train.clip_pretrain import world_token_ids

    train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=2, batch_size=4, warmup=1), progress=False)
    rows = load_openai_clip(tmp_path / "clip.safetensors").token_embedding.weight
    used = torch.zeros(len(rows), dtype=torch.bool)
    used[torch.from_numpy(world_token_ids())] = True
    assert torch.count_nonzero(rows[~used]) == 0
    assert bool((rows[used].abs().sum(1) > 0).all())


def test_ablations_switch_components_off(tmp_path, capsys):
    from rvos_edge.config import get_config
    from rvos_edge.train.rvos import ablated_config

    cfg = ablated_config(get_config("demo"), ("history", "temporal"))
    assert (cfg.name, cfg.use_history, cfg.use_temporal_prompts) == ("demo-no-history-no-temporal", False, False)
    assert ablated_config(get_config("demo"), ()) == get_config("demo")
    with pytest.raises(UserError, match="unknown ablation"):
        ablated_config(get_config("demo"), ("prtc",))
    out = tmp_path / "run"
    assert main(["train", "--stage", "rvos", "--preset", "tiny", "--ablate", "history", "--out", str(out),
                 "--steps", "1", "--batch-size", "1"]) == 0
    model = load_checkpoint(out / "model.safetensors")
    assert model.config.use_history is False and model.history_prompts is None
    assert model.config.use_temporal_prompts is True
