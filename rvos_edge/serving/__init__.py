"""Serving rvos-edge on engines people already operate (issue 18).

`triton_repo`: `rvos-edge triton DIR --out REPO`, a model repository for NVIDIA Triton
Inference Server (``text_encoder`` with dynamic batching, ``clip_model`` with sequence
batching and the history as implicit state).

`batch` (with `batch_jobs`): `rvos-edge batch VIDEOS.jsonl --artifacts DIR --out OUT`, a list of
videos segmented on Ray Data, locally or on a cluster, resumable, each video's outputs those
of `rvos-edge run`. Ray is imported only when the command runs.

Nothing here imports torch.
"""
