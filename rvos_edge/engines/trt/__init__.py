"""TensorRT 10.x and 11 on Polygraphy.

plan.py decides how to build (pure), build.py builds engines with Polygraphy's loaders, runner.py
runs them on Polygraphy's TrtRunner, cuda.py holds the few CUDA calls Polygraphy lacks (device,
CUDA graphs), messages.py keeps Polygraphy's log; plugin.py registers the CubeFrameAttention
plugin (its kernel is rvos_edge.kernels.trt_plugin). tensorrt and polygraphy are imported only when used.
"""
