"""Serving rvos-edge on engines people already operate (issue 18). Nothing here imports torch.

- `triton_repo`: `rvos-edge triton DIR --out REPO`, a model repository for NVIDIA Triton
  Inference Server (``text_encoder`` with dynamic batching, ``clip_model`` with sequence
  batching and the history as implicit state).
- `server` (with `streams` and `protocol`): `rvos-edge serve DIR`, a Triton server here on
  PyTriton, one Segmenter history per stream, clips of different streams batched.
- `client`: `RemoteSegmenter(url, stream_id)`, the Segmenter API on such a server
  (``from rvos_edge.serving import RemoteSegmenter``; `rvos-edge run --server URL`).
- `batch` (with `batch_jobs`): `rvos-edge batch VIDEOS.jsonl --artifacts DIR --out OUT`, a list
  of videos segmented on Ray Data, locally or on a cluster, resumable, each video's outputs
  those of `rvos-edge run`.

Importing this package imports none of them; tritonclient and PyTriton are imported only
when a server starts or a client connects (``pip install 'rvos-edge[serve]'``), Ray only when
`rvos-edge batch` runs (``pip install 'rvos-edge[ray]'``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["RemoteError", "RemoteSegmenter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rvos_edge.serving import client
        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
