"""The torch-free contract of an artifact folder: what `rvos-edge export` writes and every engine reads.

  manifest.py     manifest.json: the config, graphs and tensors, files and their sha256, variants
  tensorrt.py     the manifest's "tensorrt" section: the plugin graph and the engines built
  precision.py    the precision registry: every precision, its tolerance against FP32, its J&F target
  calib_cache.py  TensorRT's INT8 calibration cache format (written by calib, read by the TensorRT build)

Nothing here imports torch, onnxruntime or tensorrt.
"""
