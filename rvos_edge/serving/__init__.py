"""Serving rvos-edge on engines people already operate (issue 18).

`triton_repo`: `rvos-edge triton DIR --out REPO`, a model repository for NVIDIA Triton
Inference Server (``text_encoder`` with dynamic batching, ``clip_model`` with sequence
batching and the history as implicit state). Nothing here imports torch.
"""
