"""A command or backend that needs a missing extra says so in one line naming it, exit 2 (rvos_edge.extras).

The missing packages are simulated in a fresh interpreter: ``sys.modules[name] = None``
makes `import name` fail and `importlib.util.find_spec(name)` return None, as on an
install without them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rvos_edge.extras import EXTRAS, IMPORT_NAMES, PINS, missing_modules, require

REPO = Path(__file__).resolve().parents[1]
HINT = "pip install 'rvos-edge[torch]'"
CASES = ["export", "init", "info", "pack", "train", "demo", "flops --verify", "flops CKPT", "run CKPT", "eval CKPT",
         "bench CKPT"]

# Runs each argv (JSON in sys.argv[1]) through the CLI and prints {argv joined: [exit code, stderr]}.
_RUN_COMMANDS = """
import contextlib, io, json
from rvos_edge.cli import main
results = {}
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results[" ".join(argv)] = [code, err.getvalue()]
print(json.dumps(results))
"""


def _blocked(modules: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter where `modules` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Each command that needs the torch extra, with arguments that get it past argparse and its input checks."""
    ckpt = tmp / "model.safetensors"
    ckpt.write_bytes(b"never read: the extra is checked first")
    video = tmp / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    c, out = str(ckpt), str(tmp / "out")
    commands = {
        "export": ["export", c, "--out", out],
        "init": ["init", "tiny", "--out", c],
        "info": ["info", "tiny"],
        "pack": ["pack", c, "--out", out],
        "train": ["train", "--stage", "clip", "--out", out],
        "demo": ["demo", "--out", out],
        "flops --verify": ["flops", "tiny", "--verify"],
        "flops CKPT": ["flops", c],
        "run CKPT": ["run", c, "--video", str(video), "--expr", "the cup", "--out", out],
        "eval CKPT": ["eval", c, "--data", "synthetic:1:1"],
        "bench CKPT": ["bench", c],
    }
    assert list(commands) == CASES
    return commands


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], dict[str, list]]:
    """(the commands, their [exit code, stderr]) with torch, onnxscript and safetensors blocked: one interpreter."""
    tmp = tmp_path_factory.mktemp("extras")
    commands = _commands(tmp)
    p = _blocked(EXTRAS["torch"], _RUN_COMMANDS, json.dumps(list(commands.values())))
    assert p.returncode == 0, p.stderr
    assert not (tmp / "out").exists(), "a command wrote output before checking its extra"
    return commands, json.loads(p.stdout)


@pytest.mark.parametrize("case", CASES)
def test_command_without_torch_is_one_line_naming_the_extra(without_torch, case: str) -> None:
    commands, results = without_torch
    argv = commands[case]
    code, stderr = results[" ".join(argv)]
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    line = stderr.strip()
    assert line.startswith(f"rvos-edge {argv[0]}: error: ")
    assert line.endswith(f"needs the torch extra (not installed: torch, onnxscript, safetensors): {HINT}")


def test_torch_backend_from_python_names_the_extra(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"never read")
    p = _blocked(("torch",), "from rvos_edge import Segmenter\n"
                             "from rvos_edge.errors import UserError\n"
                             "try:\n"
                             "    Segmenter.open(sys.argv[1], backend='torch')\n"
                             "except UserError as e:\n"
                             "    print(e)\n", str(ckpt))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"the torch backend needs the torch extra (not installed: torch): {HINT}\n"


def test_only_the_missing_modules_are_named() -> None:
    p = _blocked(("onnxscript",), "from rvos_edge.extras import missing_modules, require\n"
                                  "from rvos_edge.errors import UserError\n"
                                  "print(missing_modules('torch'))\n"
                                  "try:\n"
                                  "    require('torch', 'export')\n"
                                  "except UserError as e:\n"
                                  "    print(e)\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["['onnxscript']",
                                     f"export needs the torch extra (not installed: onnxscript): {HINT}"]


def test_an_installed_extra_passes() -> None:
    assert missing_modules("torch") == []
    require("torch", "this test")


def test_the_extras_match_pyproject() -> None:
    """`require` checks exactly the packages pyproject.toml's extra installs (each imports under its own name
    or the one IMPORT_NAMES gives; PINS only narrow base dependencies)."""
    tomllib = pytest.importorskip("tomllib")          # Python >= 3.11
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {re.match(r"[A-Za-z0-9_.-]+", requirement).group() for requirement in declared[extra]}
        packages = {IMPORT_NAMES.get(name, name) for name in names if name not in PINS}
        assert packages == set(modules), extra
