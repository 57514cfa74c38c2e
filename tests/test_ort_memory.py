"""Peak memory of ONNX Runtime sessions (`rvos_edge.engines.ort.session`, issue 21): a CPU session keeps its
weights once and one clip's activations, measured as the VmHWM / VmRSS of a fresh process on two generated
graphs shaped like vit-b16's problem (the defaults: 2x the activations, 2.7x the weights)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status")

# Run in a fresh interpreter: open argv[1] with ort_session, run it `runs` times on zeros, print the VmRSS
# growth after opening, after another malloc_trim, and the VmHWM growth after the runs (MB).
_MEASURE = """
import sys
import numpy as np
from pathlib import Path
from rvos_edge.engines.ort.session import ort_session, release_freed_heap

def kb(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

base = kb("VmRSS")
session = ort_session(sys.argv[1], threads=1)
opened = kb("VmRSS") - base
release_freed_heap()
trimmed = kb("VmRSS") - base
arg = session.get_inputs()[0]
for _ in range(int(sys.argv[2])):
    session.run(None, {arg.name: np.zeros(arg.shape, np.float32)})
print(opened, trimmed, kb("VmHWM") - base)
"""


def _measure(model: Path, runs: int) -> tuple[float, float, float]:
    p = subprocess.run([sys.executable, "-c", _MEASURE, str(model), str(runs)], capture_output=True, text=True,
                       check=False, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    opened, trimmed, peak = map(float, p.stdout.split())
    return opened, trimmed, peak


def _save(path: Path, nodes: list, inputs: list, output: str, initializers: list) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_a_session_keeps_its_weights_once(tmp_path: Path) -> None:
    """512 weight matrices of 96 KB (48 MB), half of them transposed by constant folding: ORT frees the parsed
    graph and the folded originals into glibc's heap, which ort_session hands back (the defaults keep 130 MB)."""
    rng = np.random.default_rng(0)
    nodes, initializers, x = [], [], "x"
    for i in range(256):
        initializers += [numpy_helper.from_array(rng.standard_normal((96, 256)).astype(np.float32), f"w{i}"),
                         numpy_helper.from_array(rng.standard_normal((96, 256)).astype(np.float32), f"v{i}")]
        nodes += [helper.make_node("Transpose", [f"w{i}"], [f"t{i}"], perm=[1, 0]),
                  helper.make_node("MatMul", [x, f"t{i}"], [f"y{i}"]), helper.make_node("Tanh", [f"y{i}"], [f"h{i}"]),
                  helper.make_node("MatMul", [f"h{i}", f"v{i}"], [f"z{i}"])]
        x = f"z{i}"
    model = _save(tmp_path / "weights.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
                  x, initializers)
    weights_mb = 512 * 96 * 256 * 4 / MB
    opened, trimmed, _ = _measure(model, runs=0)
    assert opened < 1.4 * weights_mb and opened - trimmed < 2, (opened, trimmed)


def test_a_cpu_session_keeps_one_runs_activations(tmp_path: Path) -> None:
    """A 32 MB weight and 64 MB activations (Expand -> Relu -> Softmax -> Mul, three alive at once): after three
    runs the peak is the weight and one run's activations; ORT's memory pattern (the default) would allocate a
    second block for them on the second run while its arena kept the first run's chunks."""
    w = np.random.default_rng(0).standard_normal((16384, 512)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"]),
             helper.make_node("Unsqueeze", ["y", "axes"], ["y4"]), helper.make_node("Expand", ["y4", "shape"], ["big"]),
             helper.make_node("Relu", ["big"], ["r"]), helper.make_node("Softmax", ["r"], ["s"], axis=-1),
             helper.make_node("Mul", ["s", "r"], ["m"]), helper.make_node("ReduceSum", ["m", "axes"], ["out"], keepdims=0)]
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0], np.int64), "axes"),
                    numpy_helper.from_array(np.array([4, 256, 16384], np.int64), "shape")]
    model = _save(tmp_path / "activations.onnx", nodes,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 512])], "out", initializers)
    big = 4 * 256 * 16384 * 4 / MB                                        # one [4, 256, 16384] float32: 64 MB
    floor = w.nbytes / MB + 3 * big + big / 4                             # the weight, r + s + m, and y
    _, _, peak = _measure(model, runs=3)
    assert floor * 0.9 < peak < 1.3 * floor, (peak, floor)                # the defaults: 475 MB against 240

