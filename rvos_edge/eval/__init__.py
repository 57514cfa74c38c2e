"""Evaluation: DAVIS-compatible J and F, and J&F of a model over a dataset through the runtime.

    from rvos_edge.eval import region_similarity, boundary_f, evaluate
"""
from rvos_edge.eval.evaluate import EvalReport, ExpressionScore, evaluate, run_eval, score_video, summarize
from rvos_edge.eval.metrics import boundary_f, region_similarity, seg2bmap

__all__ = ["EvalReport", "ExpressionScore", "boundary_f", "evaluate", "region_similarity", "run_eval",
           "score_video", "seg2bmap", "summarize"]
