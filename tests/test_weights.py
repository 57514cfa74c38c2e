"""Reading weights files: safetensors, torch.save, TorchScript archives (without running them)."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from rvos_edge.errors import UserError
from rvos_edge.fileio import sha256_file as file_sha256
from rvos_edge.model.weights import read_safetensors_metadata, read_state_dict

# torch.jit.script/trace/save are deprecated upstream, but they write the archives under test.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

WIDTH = 8


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.width = WIDTH  # a non-tensor attribute: not part of the state dict
        self.in_proj_weight = nn.Parameter(torch.randn(3 * WIDTH, WIDTH))
        self.in_proj_bias = nn.Parameter(torch.randn(3 * WIDTH))
        self.out_proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.linear(x, self.in_proj_weight, self.in_proj_bias)[..., : self.width])


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln_1(x))


class Transformer(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[Block() for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=4, stride=4, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH))
        self.transformer = Transformer(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, x.shape[2])
        return self.transformer(torch.cat([cls, x], dim=1))


class TinyClip(nn.Module):
    """CLIP-like names, a buffer, and buffers that are views of a parameter's storage."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = Visual()
        self.transformer = Transformer(1)
        self.token_embedding = nn.Embedding(16, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(5, WIDTH))
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, 6))
        self.logit_scale = nn.Parameter(torch.tensor(2.5))
        self.register_buffer("input_resolution", torch.tensor(8))
        # Non-contiguous and sharing text_projection's storage.
        self.register_buffer("projection_t", self.text_projection.detach().t())
        # Same storage as positional_embedding, at a non-zero offset.
        self.register_buffer("positional_tail", self.positional_embedding.detach()[2:, 1:])

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image_features = self.visual(image)[:, 0]
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        text_features = self.ln_final(self.transformer(x))[:, -1] @ self.text_projection
        return image_features.sum() + text_features.sum() * self.logit_scale.exp()


def make_model(dtype: torch.dtype = torch.float32) -> TinyClip:
    torch.manual_seed(0)
    return TinyClip().to(dtype).eval()


def save_torchscript(model: TinyClip, path: Path, how: str) -> None:
    if how == "script":
        compiled = torch.jit.script(model)
    else:
        dtype = model.positional_embedding.dtype
        example = (torch.randn(1, 3, 8, 8, dtype=dtype), torch.zeros(1, 4, dtype=torch.long))
        compiled = torch.jit.trace(model, example)
    torch.jit.save(compiled, str(path))


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, dtypes, shapes and bytes."""
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = actual[key]
        assert isinstance(got, torch.Tensor), key
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)
        ), key


def test_model_under_test_has_clip_names_and_odd_layouts() -> None:
    state = make_model().state_dict()
    for key in (
        "visual.conv1.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.1.attn.out_proj.weight",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "logit_scale",
        "input_resolution",
    ):
        assert key in state
    assert not state["projection_t"].is_contiguous()
    assert state["positional_tail"].storage_offset() > 0


def test_safetensors_round_trip(tmp_path: Path) -> None:
    expected = make_model().state_dict()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.clone().contiguous() for k, v in expected.items()}, str(path))
    assert_same_tensors(read_state_dict(path), expected)


@pytest.mark.parametrize("legacy_format", [False, True])
@pytest.mark.parametrize("wrap", ["flat", "state_dict", "module_prefix"])
def test_torch_save_round_trip(tmp_path: Path, legacy_format: bool, wrap: str) -> None:
    expected = make_model().state_dict()
    if wrap == "state_dict":
        payload: object = {"state_dict": expected, "epoch": 3}
    elif wrap == "module_prefix":
        payload = {f"module.{k}": v for k, v in expected.items()}
    else:
        payload = expected
    path = tmp_path / "model.pth"
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    assert_same_tensors(read_state_dict(path), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip(tmp_path: Path, how: str, dtype: torch.dtype) -> None:
    model = make_model(dtype)
    expected = model.state_dict()
    path = tmp_path / "ViT-tiny.pt"
    save_torchscript(model, path, how)

    actual = read_state_dict(path)

    assert list(actual) == list(expected)
    assert_same_tensors(actual, expected)
    assert actual["text_projection"].dtype == dtype
    assert actual["input_resolution"].dtype == torch.int64
    for key in ("projection_t", "positional_tail"):
        assert actual[key].stride() == expected[key].stride()
        assert actual[key].storage_offset() == expected[key].storage_offset()
    # Views that shared a storage in the model share one after reading.
    if dtype == torch.float32:  # .to(float16) gives each tensor its own storage
        assert (
            actual["projection_t"].untyped_storage().data_ptr()
            == actual["text_projection"].untyped_storage().data_ptr()
        )
        assert (
            actual["positional_tail"].untyped_storage().data_ptr()
            == actual["positional_embedding"].untyped_storage().data_ptr()
        )


def test_torchscript_is_read_without_torch_jit_load(tmp_path: Path, monkeypatch) -> None:
    model = make_model()
    path = tmp_path / "model.pt"
    save_torchscript(model, path, "script")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive must not be loaded by torch")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert_same_tensors(read_state_dict(path), model.state_dict())


class _Payload:
    """Pickles as a call to `function(source)`, the way a malicious file would."""

    def __init__(self, function: object, argument: str) -> None:
        self.function = function
        self.argument = argument

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.function, (self.argument,)


def _payload(kind: str, marker: Path) -> _Payload:
    if kind == "os.system":
        return _Payload(os.system, f"touch '{marker}'")
    return _Payload(exec, f"open({str(marker)!r}, 'w').close()")


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_torchscript_archive_with_code_in_data_pkl_is_refused(tmp_path: Path, kind: str) -> None:
    # The payload is live: plain pickle runs it.
    check_marker = tmp_path / "plain_pickle_ran"
    pickle.loads(pickle.dumps(_payload(kind, check_marker), protocol=2))
    assert check_marker.exists()

    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"weight": _payload(kind, marker)}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/code/__torch__.py", "")
        archive.writestr("evil/version", "3\n")

    with pytest.raises(UserError, match="refusing to unpickle") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_torch_save_with_a_python_object_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2), "extra": _payload("builtins.exec", marker)}, path)

    with pytest.raises(UserError, match="not unpickled") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, replace.get(name, old.read(name)))


def test_torchscript_tensor_past_its_storage_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_torchscript(make_model(), good, "script")
    with zipfile.ZipFile(good) as archive:
        storages = [n for n in archive.namelist() if n.startswith("good/data/")]
        shortened = {n: archive.read(n)[:2] for n in storages}
    bad = tmp_path / "bad.pt"
    _rewrite_zip(good, bad, shortened)
    with pytest.raises(UserError, match="corrupt TorchScript archive"):
        read_state_dict(bad)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    archive = tmp_path / "archive.pt"
    save_torchscript(make_model(), archive, "script")
    saved = tmp_path / "saved.pt"
    torch.save(make_model().state_dict(), saved)
    files = {
        "garbage": b"this is not a weights file at all",
        "empty": b"",
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......",
        "truncated_torchscript": archive.read_bytes()[: archive.stat().st_size // 2],
        "truncated_torch_save": saved.read_bytes()[: saved.stat().st_size // 2],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / (name if "." in name else f"{name}.pt")
        paths[name].write_bytes(data)
    empty_dict = tmp_path / "empty_dict.pt"
    torch.save({}, empty_dict)
    paths["empty_dict"] = empty_dict
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(2)], not_a_dict)
    paths["not_a_dict"] = not_a_dict
    paths["missing"] = tmp_path / "missing.pt"
    return paths


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "empty",
        "garbage.safetensors",
        "truncated_torchscript",
        "truncated_torch_save",
        "empty_dict",
        "not_a_dict",
        "missing",
    ],
)
def test_bad_files_raise_one_line_user_errors(tmp_path: Path, case: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(UserError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "\n" not in message


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) // 2)  # 2.5 MiB: several chunks and a partial one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(UserError):
        file_sha256(tmp_path / "missing.bin")


def test_safetensors_metadata_round_trip(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(4.0)}
    with_metadata = tmp_path / "with.safetensors"
    metadata = {"preset": "tiny", "source": "ViT-B-16.pt"}
    safetensors.torch.save_file(tensors, str(with_metadata), metadata=metadata)
    without = tmp_path / "without.safetensors"
    safetensors.torch.save_file(tensors, str(without))

    assert read_safetensors_metadata(with_metadata) == metadata
    assert read_safetensors_metadata(without) == {}
    with pytest.raises(UserError):
        read_safetensors_metadata(tmp_path / "missing.safetensors")
