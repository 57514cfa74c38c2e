"""OpenVINO: the artifact folder's ONNX graphs compiled by OpenVINO's CPU plugin (x86 CPUs).

    engines = open_openvino("artifacts/", "bf16", threads=2)       # or open_engines(..., backend="openvino")

`runner.open_openvino` compiles the graphs of a precision: fp32 and the folder's fp16 and
int8 (Q/DQ) variants with the f32 inference precision, bf16 as the FP32 graphs with the
bf16 inference precision (refused where the CPU has no BF16). Compiled models are cached
in ``DIR/openvino_cache/`` so the second start skips compilation. ``pip install
'rvos-edge[openvino]'`` installs openvino; it is imported only when this backend is used.
Importing this package imports neither openvino nor torch.
"""
