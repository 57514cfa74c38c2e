"""The torch boundary: the runtime, the artifact contract, the engines but torch/ and the tokenizer never
import torch (checked in fresh interpreters)."""
from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

from fake_artifacts import make_fake_artifacts

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE_PACKAGES = ("rvos_edge.artifacts", "rvos_edge.engines", "rvos_edge.runtime", "rvos_edge.serving")
TORCH_ENGINE = "rvos_edge.engines.torch"


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


def torch_free_modules() -> list[str]:
    """rvos_edge.tokenizer and every module of TORCH_FREE_PACKAGES, the packages included, but TORCH_ENGINE's."""
    names = ["rvos_edge.tokenizer"]
    for package in TORCH_FREE_PACKAGES:
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
    return [n for n in names if n != TORCH_ENGINE and not n.startswith(TORCH_ENGINE + ".")]


def test_no_torch_free_module_imports_torch() -> None:
    names = torch_free_modules()
    assert {"rvos_edge.artifacts.manifest", "rvos_edge.engines.ort.runner", "rvos_edge.engines.trt.runner",
            "rvos_edge.runtime.segmenter", "rvos_edge.serving.server", "rvos_edge.serving.client"} <= set(names)
    # One interpreter imports them one by one: the first whose import brings torch in is named.
    p = _python("import importlib, sys\n"
                "for name in sys.argv[1:]:\n"
                "    importlib.import_module(name)\n"
                "    if 'torch' in sys.modules:\n"
                "        sys.exit(f'importing {name} imports torch')", *names)
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
