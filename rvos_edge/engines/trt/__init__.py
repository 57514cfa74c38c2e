"""TensorRT 10.x and 11: plan.py decides how to build (pure), build.py builds engines, runner.py runs them,
plugin.py and plugin_kernel.py are the CubeFrameAttention plugin. tensorrt is imported only when used."""
