"""The runtime, the manifest and the ORT backend never import torch (checked in fresh interpreters)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fake_artifacts import make_fake_artifacts

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_imports_do_not_import_torch() -> None:
    p = _python("import sys, rvos_edge, rvos_edge.runtime, rvos_edge.export, rvos_edge.artifacts.manifest, "
                "rvos_edge.engines.ort.runner, rvos_edge.engines.torch.runner, rvos_edge.runtime.run\n"
                "from rvos_edge import Segmenter\n"
                "assert Segmenter is rvos_edge.runtime.Segmenter\n"
                "assert 'torch' not in sys.modules, 'torch imported'")
    assert p.returncode == 0, p.stderr


def test_running_the_ort_backend_does_not_import_torch(tmp_path: Path) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    p = _python("import sys, numpy as np\n"
                "from rvos_edge import Segmenter\n"
                "seg = Segmenter.open(sys.argv[1], backend='ort')\n"
                "seg.set_expression('the red cup')\n"
                "out = [r for _ in range(4) for r in seg.push(np.zeros((30, 40, 3), np.uint8))] + seg.flush()\n"
                "assert [r.index for r in out] == [0, 1, 2, 3]\n"
                "assert 'torch' not in sys.modules, 'torch imported'", str(art))
    assert p.returncode == 0, p.stderr
