"""ONNX Runtime: the artifact folder's ONNX graphs (any precision variant) on the CPU or through CUDA.

`runner.open_ort` loads; `session.ort_session` is the one place an InferenceSession is made
(the runner, calibration and the exporter's parity check use it). Its precisions are built by
`rvos_edge.calib` (ONNX -> ONNX), the graphs it then runs.
"""
