"""The VLP-RVOS model in PyTorch (DESIGN.md section 2); everything here needs torch.

    from rvos_edge.model import build_model, load_checkpoint, save_checkpoint, VLPRVOS
"""
from rvos_edge.model.checkpoint import build_model, load_checkpoint, read_checkpoint_config, save_checkpoint
from rvos_edge.model.clip import load_openai_clip
from rvos_edge.model.text import TextFeatures
from rvos_edge.model.vlprvos import VLPRVOS

__all__ = ["VLPRVOS", "TextFeatures", "build_model", "load_checkpoint", "load_openai_clip", "read_checkpoint_config",
           "save_checkpoint"]
