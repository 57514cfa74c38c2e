"""PyTorch backend: a ``.safetensors`` checkpoint run eagerly (the reference for parity).

torch is imported when `open_torch` is called, never when this module is
imported. The model runs under ``torch.inference_mode`` in fp32 with its
prompts folded (they are constants at inference); it accepts any clip length >= 1.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, expected_graphs
from rvos_edge.engines.base import Engines, Runner
from rvos_edge.errors import UserError
from rvos_edge.extras import require

_CLIP_LEN = (1, None)


class TorchTextRunner(Runner):
    """model.encode_text: tokens int64 [B, 77] -> text_feats, text_mask, text_global."""

    def __init__(self, model: Any, device: Any) -> None:
        graph = expected_graphs(model.config, _CLIP_LEN)[TEXT_ENCODER]
        self.name, self.inputs, self.outputs = TEXT_ENCODER, graph.inputs, graph.outputs
        self.model, self.device = model, device

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            text = self.model.encode_text(torch.from_numpy(np.asarray(feeds["tokens"], np.int64)).to(self.device))
        return {"text_feats": text.feats.float().cpu().numpy(), "text_mask": text.mask.cpu().numpy(),
                "text_global": text.global_.float().cpu().numpy()}


class TorchClipRunner(Runner):
    """model.forward_clip: frames uint8 [B, Tc, S, S, 3] + text + history -> mask_logits, history_out."""

    def __init__(self, model: Any, device: Any) -> None:
        graph = expected_graphs(model.config, _CLIP_LEN)[CLIP_MODEL]
        self.name, self.inputs, self.outputs = CLIP_MODEL, graph.inputs, graph.outputs
        self.model, self.device = model, device
        self.timing = ("cuda events around forward_clip, inputs on the GPU" if device.type == "cuda" else
                       "perf_counter around forward_clip")

    def _forward(self, feeds: dict[str, np.ndarray]) -> Callable[[], tuple[Any, Any]]:
        """forward_clip on `feeds` moved to the device once: a closure returning (logits, history) tensors."""
        import torch

        from rvos_edge.model import TextFeatures

        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in self.cast_feeds(feeds).items()}
        text = TextFeatures(t["text_feats"], t["text_mask"], t["text_global"])

        def forward() -> tuple[Any, Any]:
            with torch.inference_mode():
                return self.model.forward_clip(t["frames"], text, t["history"], t["has_history"])
        return forward

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits, history = self._forward(feeds)()
        return {"mask_logits": logits.float().cpu().numpy(), "history_out": history.float().cpu().numpy()}

    def timer(self, feeds: dict[str, np.ndarray]) -> Callable[[], float]:
        """Seconds of forward_clip alone, the inputs already on the device (see `timing`)."""
        import torch

        forward = self._forward(feeds)
        if self.device.type != "cuda":
            def timed() -> float:
                t0 = time.perf_counter()
                forward()
                return time.perf_counter() - t0
            return timed
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_timed() -> float:
            torch.cuda.synchronize(self.device)
            start.record()
            forward()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return cuda_timed


def open_torch(path: str | Path, precision: str = "fp32", device: str = "cpu", threads: int | None = None) -> Engines:
    """Load a checkpoint for eager PyTorch inference.

    device: "cpu" or "cuda" (or "cuda:N"); threads: torch intra-op threads (None: torch's default).
    """
    require("torch", "the torch backend")
    import torch

    from rvos_edge.artifacts.manifest import token_runs
    from rvos_edge.model import load_checkpoint
    from rvos_edge.model.text import learnt_token_ids

    if precision != "fp32":
        raise UserError(f"the torch backend runs fp32 only, not {precision}; "
                        "export the checkpoint and use --backend ort for other precisions")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown torch device {device!r}: {e}") from None
    model = load_checkpoint(path).fold_prompts().eval().to(dev)
    return Engines(text=TorchTextRunner(model, dev), clip=TorchClipRunner(model, dev), config=model.config,
                   precision=precision, clip_len=_CLIP_LEN, backend="torch", source=str(path),
                   learnt_tokens=token_runs(learnt_token_ids(model.clip)))
