"""Export: the PyTorch model to ONNX artifacts, their manifest, precision variants.

`rvos_edge.artifacts.manifest` describes an artifact folder and is read by the
runtime, so it (and this package's ``__init__``) never imports torch; the
exporter modules import torch themselves.
"""
