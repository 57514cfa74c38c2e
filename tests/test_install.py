"""`pip install rvos-edge` with no extras: the torch-free runtime (issue 17, pyproject.toml).

A fresh venv gets the package as a clone's `pip install .` builds it: pyproject.toml,
README.md and rvos_edge/, copied so that the build's own files (build/, *.egg-info)
stay out of the checkout. That venv has no torch. An artifact folder exported here
(with this venv's torch) runs there through `rvos-edge run` and the Python
`Segmenter`, and `rvos-edge export` there is one line naming the extra, exit 2.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import export_tiny

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FRAMES = 5

# In the plain venv: the video decoded as `rvos-edge run` decodes it, segmented through the Python API,
# each mask compared with the PNG `run` wrote for that frame.
_SEGMENTER = """
import sys
from contextlib import closing
from pathlib import Path
import cv2, numpy as np
from rvos_edge import Segmenter
from rvos_edge.runtime.video import open_video

art, video, masks = sys.argv[1:]
seg = Segmenter.open(art, backend="ort")
seg.set_expression("the bright square")
with closing(open_video(video)) as source:
    results = [r for _, frame in source for r in seg.push(frame)] + seg.flush()
assert [r.index for r in results] == list(range(len(results))), [r.index for r in results]
for r in results:
    written = cv2.imread(str(Path(masks) / f"{r.index:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert np.array_equal(r.mask, written), f"frame {r.index}: the Segmenter's mask differs from run's"
print(len(results))
"""


def _plain_env() -> dict[str, str]:
    """This environment without what would let the fresh venv see this checkout or other site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def _in_venv(venv: Path, program: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / program), *map(str, args)], capture_output=True, text=True,
                          env=_plain_env(), cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install .` of this checkout, no extras."""
    root = tmp_path_factory.mktemp("install")
    source = root / "rvos-edge"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "rvos_edge", source / "rvos_edge", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_plain_env(), timeout=120)
    p = _in_venv(venv, "python", "-m", "pip", "install", "-q", source, cwd=root)
    assert p.returncode == 0, p.stderr[-4000:]
    return venv


def test_plain_install_has_no_torch(plain_venv: Path, tmp_path: Path) -> None:
    p = _in_venv(plain_venv, "python", "-c", "import rvos_edge; print(rvos_edge.__file__); import torch",
                 cwd=tmp_path)
    assert p.stdout.startswith(str(plain_venv)), p.stdout       # the installed package, not this checkout
    assert p.returncode == 1 and "No module named 'torch'" in p.stderr, p.stderr


def test_plain_install_runs_an_artifact_folder(plain_venv: Path, tmp_path: Path, tiny_export: Path) -> None:
    art = export_tiny(tmp_path, tiny_export)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(FRAMES):
        frame = np.full((48, 64, 3), 30, np.uint8)
        frame[10:30, 8 + 6 * i:28 + 6 * i] = 230                    # a bright square moving right
        writer.write(frame)
    writer.release()

    out = tmp_path / "out"
    p = _in_venv(plain_venv, "rvos-edge", "run", art, "--video", video, "--expr", "the bright square",
                 "--out", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]

    p = _in_venv(plain_venv, "python", "-c", _SEGMENTER, art, video, out / "masks", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(FRAMES)


def test_plain_install_export_names_the_extra(plain_venv: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    ckpt.write_bytes(b"never read: the missing extra is reported first")
    p = _in_venv(plain_venv, "rvos-edge", "export", ckpt, "--out", tmp_path / "art", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == ("rvos-edge export: error: this command needs the torch extra "
                        "(not installed: torch, onnxscript, safetensors): pip install 'rvos-edge[torch]'\n")
    assert not (tmp_path / "art").exists()
