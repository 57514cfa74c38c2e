"""Issue 20's training pieces: dense region-phrase alignment in CLIP pretraining (phrases,
coverage, the losses by hand, the per-patch probe), the old recipe through flags, gradient
accumulation, time budgets and batches made by worker processes."""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch

from rvos_edge.cli import main
from rvos_edge.data.synthetic import SceneObject, generate_frame, patch_coverage
from rvos_edge.model import build_model
from rvos_edge.model.clip import CLIP, load_openai_clip
from rvos_edge.model.vlprvos import clip_arch
from rvos_edge.train.clip_pretrain import (BACKGROUND, CLIPTrainOptions, clip_batch, contrastive_loss, dense_weights,
                                           object_phrase, pairs, patch_phrase_hits, pooled_phrase_loss,
                                           region_phrase_loss, region_targets, sincos_positions, train_clip, visible,
                                           zero_unused_tokens)
from rvos_edge.train.loader import step_batches
from rvos_edge.train.progress import TrainingBar
from rvos_edge.train.rvos import TrainData, accumulate_gradients, step_batch, warmup_cosine
from rvos_edge.train.state import read_log, read_state


def _object(id: int, shape: str, colour: str, size: str, x: float, y: float) -> SceneObject:
    return SceneObject(id, shape, colour, size, 12.0, "still", np.array([[x, y]], np.float32))


def test_object_phrase_names_size_colour_shape_and_place():
    assert object_phrase(_object(1, "circle", "red", "big", 20, 60)) == "the big red circle on the left"
    assert object_phrase(_object(2, "cross", "blue", "small", 64, 10)) == "the small blue cross at the top"
    assert object_phrase(_object(3, "square", "green", "small", 64, 64)) == "the small green square in the middle"


def test_patch_coverage_by_hand():
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0:2] = 1            # top-left cell: 2 of its 4 pixels
    labels[2:4, 2:4] = 2          # bottom-right cell: all of it
    labels[3, 0] = 1              # bottom-left cell: 1 pixel
    cover = patch_coverage(labels, [1, 2], grid=2)
    np.testing.assert_allclose(cover, [[0.5, 0, 0.25, 0], [0, 0, 0, 1], [0.5, 1, 0.75, 0]])
    with pytest.raises(ValueError, match="does not split"):
        patch_coverage(labels, [1], grid=3)


def test_region_targets_come_from_the_generators_masks_and_attributes():
    scenes = [generate_frame(5, i)[1:] for i in range(6)]
    phrases, owners, coverage = region_targets(scenes, grid=8)
    most = max(len(visible(*scene)) for scene in scenes)
    assert owners.shape == (6, most) and coverage.shape == (6, 64, most + 1)
    weights = dense_weights(torch.from_numpy(owners), torch.from_numpy(coverage), len(phrases)).numpy()
    assert weights.shape == (6, 64, len(phrases) + 1) and phrases == list(dict.fromkeys(phrases))
    for b, (objects, labels) in enumerate(scenes):
        seen = visible(objects, labels)
        assert {phrases[k] for k in np.flatnonzero(weights[b, :, :-1].sum(0))} == {object_phrase(o) for o in seen}
        for o in seen:              # coverage times the cell's 16 x 16 pixels counts the object's pixels
            k = phrases.index(object_phrase(o))
            same = sum(np.count_nonzero(labels == x.id) for x in seen if object_phrase(x) == phrases[k])
            assert weights[b, :, k].sum() * 256 == pytest.approx(same)
        assert weights[b, :, -1].sum() * 256 == pytest.approx(np.count_nonzero(labels == 0))
        hidden = sum(np.count_nonzero(labels == o.id) for o in objects if o not in seen)
        assert weights[b].sum() * 256 == pytest.approx(128 * 128 - hidden)   # too small to name: no weight
    from rvos_edge.tokenizer import tokenize
    from rvos_edge.train.clip_pretrain import world_token_ids
    assert set(np.unique(tokenize([*phrases, BACKGROUND])).tolist()) <= set(world_token_ids().tolist())


def test_clip_batch_holds_the_pairs_and_tokenised_phrases_with_background_last():
    images, captions, negatives = pairs(2, 1, 4, 64, hard_negatives=1)
    batch = clip_batch(2, 1, 4, 64, hard_negatives=1, grid=4)
    assert torch.equal(batch.images, torch.from_numpy(images)) and batch.negatives.shape == (4, 77)
    assert batch.coverage.shape[:2] == (4, 16) and batch.owners.shape == (4, batch.coverage.shape[2] - 1)
    assert int(batch.owners.max()) < len(batch.phrases) - 1
    from rvos_edge.tokenizer import tokenize
    assert torch.equal(batch.phrases[-1], torch.from_numpy(tokenize([BACKGROUND])[0]))
    plain = clip_batch(2, 1, 4, 64)
    assert plain.phrases is None and plain.owners is None and plain.coverage is None and plain.negatives is None


def test_region_phrase_loss_by_hand():
    """Image 0's patch 0 shows phrase A over half its area, background over the rest; image 1's
    patch 0 is all phrase B (A's negative in image 0, and the reverse), its patch 1 all
    background; image 0's patch 1 weighs nothing (an object too small to be named)."""
    e = torch.eye(3)
    texts = e                                                     # A, B, background
    patches = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[1], e[2]])])     # [2, 2, 3]
    weights = torch.zeros(2, 2, 3)
    weights[0, 0] = torch.tensor([0.5, 0.0, 0.5])
    weights[1, 0] = torch.tensor([0.0, 1.0, 0.0])
    weights[1, 1] = torch.tensor([0.0, 0.0, 1.0])
    s = 2.0
    z = math.exp(s) + 2                                           # softmax denominator of a patch on a text
    right, wrong = -math.log(math.exp(s) / z), -math.log(1 / z)
    objects = (0.5 * right + 1.0 * right) / 1.5                   # image 0's A (on e1), image 1's B (on e2)
    background = (0.5 * wrong + 1.0 * right) / 1.5               # image 0's patch 0 is on e1, not e3
    assert region_phrase_loss(patches, texts, weights, s).item() == pytest.approx((objects + background) / 2, rel=1e-6)
    weights[0, 0, 0] = 0.0                                        # no object pixel at all: the object part is 0
    assert region_phrase_loss(patches, texts, weights, s).item() == pytest.approx((right + background) / 2, rel=1e-6)


def test_pooled_phrase_loss_by_hand():
    e = torch.eye(2)
    patches = torch.stack([e[0], e[1]])[None]                     # [1, 2, 2]: one image, two patches
    weights = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])             # both patches show phrase A, equally
    # pooled = (e1 + e2) / sqrt 2: cosine 1/sqrt 2 to A and to B, so the cross-entropy is ln 2
    assert pooled_phrase_loss(patches, e, weights, 1.0).item() == pytest.approx(math.log(2), rel=1e-6)
    weights = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])             # pooled (3 e1 + e2) / |.|
    c = torch.tensor([3.0, 1.0]) / math.sqrt(10)
    assert pooled_phrase_loss(patches, e, weights, 5.0).item() == pytest.approx(
        -math.log(math.exp(5 * c[0]) / (math.exp(5 * c[0]) + math.exp(5 * c[1]))), rel=1e-5)
    assert pooled_phrase_loss(patches, e, torch.zeros(1, 2, 2), 1.0).item() == 0.0     # no object: nothing


def test_per_patch_probe_on_a_constructed_case():
    e = torch.eye(3)
    texts = 2 * e                                                 # A, B, background (any length)
    patches = torch.stack([e[0], e[0], e[2], e[1] + 0.1 * e[0]])
    weights = torch.tensor([[0.9, 0.0, 0.1],                      # A's: nearest A -> right
                            [0.0, 0.6, 0.4],                      # B's: nearest A -> wrong
                            [0.0, 0.0, 1.0],                      # background: not counted
                            [0.4, 0.0, 0.6]])                     # no object covers half: not counted
    hits, choices = patch_phrase_hits(patches, texts, weights)
    assert hits.tolist() == [True, False] and choices.tolist() == [3.0, 3.0]


def test_region_weight_zero_is_the_old_recipe(tmp_path):
    """--region-weight 0 trains as the code before the dense losses did: contrastive_loss on the
    pairs of each step (here a step of it by hand: same initialisation, same AdamW step)."""
    train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=1, batch_size=4, warmup=1, hard_negatives=1,
                                region_weight=0, probe_frames=5), progress=False)
    trained = load_openai_clip(tmp_path / "clip.safetensors").state_dict()
    from rvos_edge.config import get_config
    from rvos_edge.tokenizer import tokenize
    torch.manual_seed(0)
    clip = CLIP(clip_arch(get_config("tiny")))
    with torch.no_grad():
        clip.visual.positional_embedding.copy_(sincos_positions(clip.arch.grid, clip.arch.vision_width))
    zero_unused_tokens(clip)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=5e-4, weight_decay=0.1)
    optimizer.param_groups[0]["lr"] = warmup_cosine(0, 1, 1, 5e-4, floor=0.05)
    images, captions, negatives = pairs(0, 0, 4, 64, hard_negatives=1)
    loss, _ = contrastive_loss(clip, torch.from_numpy(images), torch.from_numpy(tokenize(captions)),
                               torch.from_numpy(tokenize(negatives)))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, trained[k]) for k, v in clip.state_dict().items())


def test_default_recipe_logs_the_dense_losses_and_probe_curve(tmp_path):
    s = train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=2, batch_size=4, warmup=1, pooled_weight=1,
                                    probe_every=1, probe_frames=20, log_every=1), progress=False)
    steps = [e for e in read_log(tmp_path) if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2] and all({"region", "pooled", "contrastive"} <= set(e) for e in steps)
    assert steps[0]["loss"] == pytest.approx(steps[0]["contrastive"] + steps[0]["region"] + steps[0]["pooled"], rel=1e-5)
    assert [c["step"] for c in s["probe_curve"]] == [1, 2]
    probes = s["attribute_accuracy"]
    assert 0 <= probes["per_patch"] <= 1 and 0.15 < probes["per_patch_chance"] < 0.5


def test_a_time_budget_stops_the_run_and_saves_the_step_reached(tmp_path):
    s = train_clip(CLIPTrainOptions(out=str(tmp_path), preset="tiny", steps=100_000, batch_size=2, warmup=1,
                                    region_weight=0, time_budget=0.5, save_every=100_000, probe_frames=5),
                   progress=False)
    assert 1 <= s["steps"] < 100_000 and read_state(tmp_path, "clip")["step"] == s["steps"]
    assert s["seconds"] < 5
    assert warmup_cosine(10, 1000, 5, 1.0, time_fraction=1.0) == pytest.approx(0.1)      # time spent: the floor
    assert warmup_cosine(10, 1000, 5, 1.0, time_fraction=0.5) == pytest.approx(0.55)     # half the time: half way
    assert warmup_cosine(2, 1000, 5, 1.0, time_fraction=0.9) == pytest.approx(0.6)       # warm-up goes by steps


def test_with_a_time_budget_the_bar_counts_its_seconds_and_names_the_step():
    out = io.StringIO()
    bar = TrainingBar("clip tiny", 40, 10**6, time_budget=60, file=out)
    bar.advance(41, 12.4, loss="1.000")
    bar.advance(42, 30.6, loss="0.900")
    assert (bar.bar.n, bar.bar.total) == (31, 60)
    bar.advance(43, 75.0, loss="0.800")                 # past the budget: the bar stays full, never beyond
    bar.close()
    text = out.getvalue()
    assert bar.bar.n == 60 and "60/60 s" in text and "step=43" in text and "1000000" not in text
    steps = TrainingBar("train tiny", 40, 50, file=io.StringIO())     # no budget: steps, from the resumed one
    steps.advance(41, 12.4)
    assert (steps.bar.n, steps.bar.total) == (41, 50)


def test_workers_make_the_same_batches():
    make = functools.partial(clip_batch, 3, batch_size=2, image_size=64, hard_negatives=1, grid=4)
    here, there = list(step_batches(make, 2, 5)), list(step_batches(make, 2, 5, workers=2))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there):
        fields = ("images", "tokens", "negatives", "phrases", "owners", "coverage")
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch():
    model = build_model("tiny", seed=0)
    model.train()
    data = TrainData("synthetic", 0)
    micro = step_batch(data, model.config, 1, 2, step=3)
    whole = data.batch(3, 2, model.config)
    assert torch.equal(torch.cat([m.frames for m in micro]), whole.frames)     # the same samples

    def grads(batches) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        model.zero_grad(set_to_none=True)
        parts = accumulate_gradients(model, batches)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, parts

    (a, parts_a), (b, parts_b) = grads(micro), grads([whole])
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    assert parts_a["loss"] == pytest.approx(parts_b["loss"], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--stage", "clip", "--accumulate", "2"], "--accumulate belongs to --stage rvos"),
    (["--stage", "rvos", "--region-weight", "0", "--probe-every", "5"], "--region-weight, --probe-every: only for"),
    (["--stage", "rvos", "--accumulate", "0"], "--accumulate must be >= 1"),
    (["--stage", "clip", "--time-budget", "0"], "--time-budget must be > 0"),
    (["--stage", "rvos", "--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--stage", "clip", "--probe-every", "-1"], "--probe-every must be >= 0, got -1"),
    (["--stage", "clip", "--region-weight", "-1"], "--region-weight and --pooled-weight must be >= 0"),
])
def test_bad_training_flags_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_rvos_command_with_accumulation_and_a_time_budget(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--stage", "rvos", "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "1",
                 "--accumulate", "2", "--time-budget", "60"]) == 0
    state = read_state(out, "rvos")
    assert state["step"] == 2 and state["options"]["accumulate"] == 2 and state["options"]["time_budget"] == 60
    assert "trained tiny to" in capsys.readouterr().out


def test_workers_are_as_many_as_shared_memory_has_room_for(tmp_path):
    from rvos_edge.train.loader import PREFETCH, fitting_workers, tensor_bytes

    batch = clip_batch(1, 0, 2, 64, hard_negatives=1, grid=4)
    assert tensor_bytes(batch) == sum(t.nbytes for t in (batch.images, batch.tokens, batch.negatives, batch.phrases,
                                                           batch.owners, batch.coverage))
    assert tensor_bytes([batch, batch]) == 2 * tensor_bytes(batch)
    import shutil
    free = shutil.disk_usage(tmp_path).free
    assert fitting_workers(3, int(free / 2 / (2.5 * PREFETCH)), str(tmp_path)) == 2     # room for two and a half
    assert fitting_workers(3, 1, str(tmp_path)) == 3 and fitting_workers(3, free, str(tmp_path)) == 0
    assert fitting_workers(3, 10**15, str(tmp_path / "missing")) == 3                    # no such folder: no limit
