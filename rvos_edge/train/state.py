"""Resumable training state in a run folder, without pickle.

    OUT/<weights file>            the model (a checkpoint, or OpenAI-format CLIP weights)
    OUT/optimizer.safetensors     AdamW moments and step counts: tensors "state.<param>.<key>",
                                  the param groups as JSON in the metadata
    OUT/train_state.json          written last: stage, step, options, the legs (one per command
                                  that trained the run: {"from", "to", "seconds", "options"}, so
                                  a resumed run records how each part was trained) and the
                                  sha256 of both files above, so a run killed half-way through a
                                  save is detected on resume instead of mixing two steps
    OUT/train_log.jsonl           one JSON object per logged step (appended)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_output, atomic_write_bytes, sha256_file
from rvos_edge.model.weights import read_safetensors_metadata

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
LOG_FILE = "train_log.jsonl"
FORMAT = "rvos-edge-train-state"


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{key}": value if isinstance(value, torch.Tensor) else torch.tensor(value)
               for idx, state in sd["state"].items() for key, value in state.items()}
    save_tensors_atomic(path, tensors, {"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in load_file(str(path)).items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = tensor
    groups = json.loads(read_safetensors_metadata(path)["param_groups"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise UserError(f"{path} does not match the model being trained: {e}") from None


def leg(start: int, step: int, seconds: float, options: dict[str, Any]) -> dict[str, Any]:
    """One command's part of a run: steps start..step, its wall time and its options."""
    return {"from": start, "to": step, "seconds": round(seconds, 1), "options": options}


def write_state(out: Path, stage: str, step: int, weights: str, options: dict[str, Any],
                legs: list[dict[str, Any]]) -> None:
    """Record that `weights` and the optimizer file in `out` hold step `step` (call after saving both);
    `legs` lists the commands that trained the run so far, the current one last (see `leg`)."""
    state = {"format": FORMAT, "stage": stage, "step": step, "options": options, "legs": legs,
             "files": {name: sha256_file(out / name) for name in (weights, OPTIMIZER_FILE)}}
    atomic_write_bytes(out / STATE_FILE, json.dumps(state, indent=1).encode())


def read_state(out: Path, stage: str) -> dict[str, Any]:
    """The state of a run folder, after checking its files are the ones it recorded."""
    path = out / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot resume from {path}: {e}") from None
    if state.get("format") != FORMAT or state.get("stage") != stage:
        raise UserError(f"{path} is not a '{stage}' training state (stage {state.get('stage')!r})")
    for name, digest in state["files"].items():
        if not (out / name).is_file() or sha256_file(out / name) != digest:
            raise UserError(f"{out / name} is not the file saved at step {state['step']} "
                            "(a save was interrupted?): cannot resume safely")
    return state


def append_log(out: Path, entry: dict[str, Any]) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_log(out: Path) -> list[dict[str, Any]]:
    """The logged steps of a run folder, oldest first ([] when it has no log)."""
    path = out / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def trim_log(out: Path, step: int) -> None:
    """Drop log lines of steps after `step` (written by a run that stopped before its next save)."""
    if (out / LOG_FILE).is_file():
        kept = [entry for entry in read_log(out) if entry.get("step", 0) <= step]
        atomic_write_bytes(out / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in kept).encode())


def recorded_legs(out: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The legs of a saved run (see `leg`). A state written before legs were recorded counts as
    one leg, its wall time the last one its log gives."""
    if "legs" in state:
        return state["legs"]
    log = [entry for entry in read_log(out) if entry.get("step", 0) <= state["step"]]
    return [leg(0, state["step"], log[-1]["seconds"] if log else 0.0, state["options"])]


def resume(optimizer: torch.optim.Optimizer, out: Path,
           state: dict[str, Any] | None) -> tuple[int, list[dict[str, Any]]]:
    """The step a run starts from and the legs before it: (0, []) when new; else the saved
    step and its `recorded_legs`, with the optimizer's state loaded and the log trimmed to that step."""
    if state is None:
        return 0, []
    load_optimizer(optimizer, out / OPTIMIZER_FILE)
    trim_log(out, state["step"])
    return state["step"], recorded_legs(out, state)
