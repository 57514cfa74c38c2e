"""Read model weights from a file without running any code the file carries.

`read_state_dict` accepts three kinds of file:

* ``*.safetensors``: read with safetensors; ``*.safetensors.gz``, the same gzip-compressed
  (the shipped demo checkpoint is one), inflated as a stream: the header is read and
  checked first (every tensor's dtype, shape and byte range, which must tile the data
  exactly, and, when the caller says what it expects, names, dtypes and shapes against
  that), then the data goes straight into one buffer of the declared size, read 1 MiB at a
  time, and a stream that inflates past the declared size is rejected at that point (a
  gzip bomb costs at most the declared size). The tensors are views of that buffer, so
  reading peaks at the tensors' own bytes plus one chunk.
* A TorchScript archive, as `torch.jit.save` writes it and as OpenAI's CLIP release
  files (``ViT-B-16.pt`` ...) are: a zip holding ``<prefix>/data.pkl`` (the module
  objects, pickled), ``<prefix>/data/<key>`` (raw storage bytes), ``<prefix>/code/``
  (TorchScript source) and ``<prefix>/constants.pkl``. Nothing in it is executed and
  ``torch.jit.load`` is never called: ``data.pkl`` goes through a restricted unpickler
  that knows only the few globals needed to rebuild tensors, and turns every
  ``__torch__.*`` class into an inert placeholder that just records its state.
  Module objects are pickled as ``GLOBAL __torch__.<qualname>; NEWOBJ; {attr: value};
  BUILD``; tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  ...)`` with the storage a persistent id ``("storage", torch.<T>Storage, key,
  location, numel)``. The flat state dict is every tensor attribute of every module,
  keyed by dotted path; this is what ``torch.jit.load(path).state_dict()`` gives, so
  tensor attributes of a traced model (CLIP's ``input_resolution``, ...) are kept, and
  so are buffers the eager module had registered as non-persistent. A module whose
  state came from a custom ``__getstate__`` (a tuple, not an attribute dict) cannot be
  read without running its ``__setstate__`` and contributes nothing.
* Anything else (``.pt``, ``.pth``, ``.bin`` ...): ``torch.load(weights_only=True)``;
  a flat dict of tensors, or one under a ``"state_dict"`` key.

Tensors come back on the CPU; tensors that shared a storage in the file share one
here too, with the file's offsets and strides.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import pickle
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping

import safetensors
import safetensors.torch
import torch

from rvos_edge.errors import UserError

GZIP_SUFFIX = ".safetensors.gz"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_MAX_HEADER = 100_000_000          # safetensors' own limit
_CHUNK = 1 << 20

# what a caller expects: {name: (dtype, shape)}
Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_state_dict(path: str | os.PathLike, expected: Layout | None = None) -> dict[str, torch.Tensor]:
    """The tensors stored in a weights file, as a flat ``{dotted name: tensor}`` dict.

    expected: the names, dtypes and shapes the caller needs; a file holding anything else is
    refused (for safetensors files before their data is read).
    Raises UserError when the file is missing, unreadable, corrupt, holds no tensors,
    would need arbitrary objects unpickled, or does not match `expected`.
    """
    path = Path(path)
    head = _read_head(path)
    if path.suffix.lower() == ".safetensors":
        tensors = _read_safetensors(path, expected)
    elif path.name.lower().endswith(GZIP_SUFFIX):
        tensors = _read_gzipped_safetensors(path, expected)
    elif head.startswith(_ZIP_MAGIC):
        tensors = _read_zip(path)
    elif head.startswith(_PICKLE_PROTO):
        tensors = _read_weights_only_pickle(path)
    else:
        raise UserError(f"{path}: not a safetensors file, TorchScript archive or torch.save file")
    if not tensors:
        raise UserError(f"{path}: holds no tensors")
    if expected is not None:
        check_layout(path, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}, expected)
    return tensors


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata header of a safetensors file (``{}`` if it has none); tensors are not read."""
    path = Path(path)
    _read_head(path)
    with _open_safetensors(path) as stream:
        return _read_header(path, stream).metadata


def is_safetensors_path(path: str | os.PathLike) -> bool:
    """True for ``*.safetensors`` and ``*.safetensors.gz`` names."""
    name = Path(path).name.lower()
    return name.endswith(".safetensors") or name.endswith(GZIP_SUFFIX)


def check_layout(path: Path, declared: Layout, expected: Layout) -> None:
    """A UserError naming (up to 3 of) the tensors of `declared` missing from, extra to or unlike `expected`."""
    problems = [f"missing {k}" for k in expected if k not in declared]
    problems += [f"unexpected {k}" for k in declared if k not in expected]
    problems += [f"{k} is {_describe(declared[k])}, expected {_describe(expected[k])}"
                 for k in declared if k in expected and declared[k] != expected[k]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: its tensors are not the ones expected: {'; '.join(problems[:3])}{more}")


def _describe(layout: tuple[torch.dtype, tuple[int, ...]]) -> str:
    dtype, shape = layout
    return f"{str(dtype).removeprefix('torch.')} {list(shape)}"


@dataclass(frozen=True)
class _Header:
    """A safetensors header: each tensor's (dtype, shape, start, end) in the data, the metadata, the data size."""

    tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]
    metadata: dict[str, str]
    data_size: int

    def layout(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {k: (dtype, shape) for k, (dtype, shape, _, _) in self.tensors.items()}


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith(GZIP_SUFFIX)


def _not_readable(path: Path, exc: BaseException) -> UserError:
    kind = "gzip-compressed safetensors" if _compressed(path) else "safetensors"
    return UserError(f"{path}: not a readable {kind} file ({_one_line(exc)})")


def _open_safetensors(path: Path) -> IO[bytes]:
    """The file's bytes as a stream, inflated when it is gzip-compressed."""
    try:
        return gzip.open(path, "rb") if _compressed(path) else path.open("rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _read_header(path: Path, stream: IO[bytes]) -> _Header:
    """Read and check the header (8-byte little-endian length, then JSON) at the start of `stream`."""
    try:
        size = int.from_bytes(_read_exactly(stream, 8), "little")
        if not 2 <= size <= _MAX_HEADER:
            raise ValueError(f"header length {size}")
        header = json.loads(_read_exactly(stream, size))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        tensors = {name: _entry(name, value) for name, value in header.items()}
        end = 0
        for name, (_, _, start, stop) in sorted(tensors.items(), key=lambda item: item[1][2:]):
            if start != end:
                raise ValueError(f"tensor {name} does not start where the one before it ends")
            end = stop
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata must map strings to strings")
    except (OSError, EOFError, zlib.error, ValueError, TypeError, KeyError) as exc:
        raise _not_readable(path, exc) from exc
    return _Header(tensors, dict(metadata), end)


def _entry(name: str, value: dict) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, its byte range checked against dtype and shape."""
    dtype = _SAFETENSORS_DTYPES[value["dtype"]]
    shape, (start, end) = tuple(value["shape"]), value["data_offsets"]
    if not all(isinstance(n, int) and n >= 0 for n in (*shape, start, end)):
        raise ValueError(f"tensor {name} has a bad shape or byte range")
    if end - start != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name}: {end - start} bytes for shape {list(shape)} of {value['dtype']}")
    return dtype, shape, start, end


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"the file ends {size - len(data)} bytes early")
    return data


def _read_head(path: Path) -> bytes:
    """The first bytes of the file; UserError if it is missing or unreadable."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with path.open("rb") as stream:
            return stream.read(8)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_safetensors(path: Path, expected: Layout | None) -> dict[str, torch.Tensor]:
    if expected is not None:
        with _open_safetensors(path) as stream:
            check_layout(path, _read_header(path, stream).layout(), expected)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError) as exc:
        raise _not_readable(path, exc) from exc


def _read_gzipped_safetensors(path: Path, expected: Layout | None) -> dict[str, torch.Tensor]:
    """Inflate as a stream into one buffer of the size the (checked) header declares; see the module docstring."""
    with _open_safetensors(path) as stream:
        header = _read_header(path, stream)
        if expected is not None:
            check_layout(path, header.layout(), expected)
        data = bytearray(header.data_size)
        view = memoryview(data)
        try:
            done = 0
            while done < len(data):
                got = stream.readinto(view[done:done + _CHUNK])
                if not got:
                    raise EOFError(f"the data ends {len(data) - done} bytes before the size its header declares")
                done += got
            beyond = stream.read(1)
        except (OSError, EOFError, zlib.error) as exc:
            raise _not_readable(path, exc) from exc
    if beyond:
        raise UserError(f"{path}: inflates past the {8 + header.data_size:,}+ bytes its header declares "
                        "(a damaged file or a decompression bomb); not read further")
    return {name: _tensor_view(data, dtype, shape, start)
            for name, (dtype, shape, start, _) in header.tensors.items()}


def _tensor_view(data: bytearray, dtype: torch.dtype, shape: tuple[int, ...], start: int) -> torch.Tensor:
    """The tensor at byte `start` of `data`, sharing its memory (copied when `start` is not aligned to its dtype)."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(data, dtype=dtype, count=count, offset=start)
    return (flat if start % dtype.itemsize == 0 else flat.clone()).reshape(shape)


def _read_zip(path: Path) -> dict[str, torch.Tensor]:
    """A zip is either a TorchScript archive (read here) or a torch.save file."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: truncated or corrupt zip archive ({_one_line(exc)})") from exc
    with archive:
        prefix = _torchscript_prefix(archive)
        if prefix is not None:
            return _read_torchscript(path, archive, prefix)
    return _read_weights_only_pickle(path)


def _torchscript_prefix(archive: zipfile.ZipFile) -> str | None:
    """The top folder of a TorchScript archive, or None for other zips (torch.save has no code/)."""
    names = set(archive.namelist())
    for name in archive.namelist():
        prefix, _, leaf = name.partition("/")
        if leaf == "data.pkl" and (
            f"{prefix}/constants.pkl" in names
            or any(other.startswith(f"{prefix}/code/") for other in names)
        ):
            return prefix
    return None


def _read_weights_only_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f" (e.g. {found.group(1)})" if found else ""
        raise UserError(
            f"{path}: contains non-tensor objects{detail} or is corrupt, and was not unpickled"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable torch.save file ({_one_line(exc)})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise UserError(f"{path}: expected a dict of tensors (or one under 'state_dict')")
    tensors = {key: value.detach() for key, value in loaded.items()}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


# --- TorchScript archives ---------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


@dataclass(frozen=True)
class _StorageType:
    """What ``GLOBAL torch <T>Storage`` stands for: just the element type."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """One storage record of the archive, copied out of the zip."""

    data: torch.UntypedStorage
    dtype: torch.dtype


class _ScriptObject:
    """Inert stand-in for an instance of a TorchScript class: it records its state, nothing more."""

    state: object = None

    def __init__(self, *args: object) -> None:
        self.state = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *_flags: object
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` on data only (requires_grad and hooks are dropped)."""
    if not isinstance(storage, _Storage):
        raise ValueError("tensor without a storage record")
    if not (
        _is_int(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(map(_is_int, size + stride))
        and offset >= 0
        and min(size + stride, default=0) >= 0
    ):
        raise ValueError(f"bad tensor geometry: offset {offset!r}, size {size!r}, stride {stride!r}")
    if 0 not in size:
        last = offset + sum((n - 1) * step for n, step in zip(size, stride))
        if (last + 1) * storage.dtype.itemsize > storage.data.nbytes():
            raise ValueError(f"tensor of size {size} runs past the end of its storage")
    return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_parameter(data: torch.Tensor, *_flags: object) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: a parameter is read as its plain tensor."""
    return data


def _same_list(data: object) -> object:
    """``torch.jit._pickle.build_*list``: the typed list is the plain list."""
    return data


def _restore_type_tag(value: object, _type: object) -> object:
    """``torch.jit._pickle.restore_type_tag``: the static type tag only matters to TorchScript."""
    return value


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _same_list,
    ("torch.jit._pickle", "build_doublelist"): _same_list,
    ("torch.jit._pickle", "build_boollist"): _same_list,
    ("torch.jit._pickle", "build_tensorlist"): _same_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


# What reading arbitrary bytes as a TorchScript archive can raise (RecursionError: a
# module that contains itself).
_CORRUPT_ARCHIVE_ERRORS = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    KeyError,
    IndexError,
    AttributeError,
    TypeError,
    ValueError,
    RuntimeError,
    OSError,
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors and inert module placeholders only."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}/data.pkl"))
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UserError(
                f"{self._path}: refusing to unpickle {module}.{name} "
                "(only tensors and TorchScript modules are read)"
            )
        return allowed

    def persistent_load(self, pid: object) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
        ):
            raise ValueError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, _numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            self._storages[key] = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
        return _Storage(self._storages[key], storage_type.dtype)


def _read_torchscript(path: Path, archive: zipfile.ZipFile, prefix: str) -> dict[str, torch.Tensor]:
    byteorder_name = f"{prefix}/byteorder"
    try:
        if byteorder_name in archive.namelist():
            byteorder = archive.read(byteorder_name).decode("ascii", "replace").strip()
            if byteorder != sys.byteorder:
                raise UserError(
                    f"{path}: {byteorder}-endian TorchScript archive on a {sys.byteorder}-endian machine"
                )
        root = _RestrictedUnpickler(path, archive, prefix).load()
        if not _is_module(root):
            raise UserError(f"{path}: {prefix}/data.pkl does not hold a TorchScript module")
        tensors: dict[str, torch.Tensor] = {}
        _collect_tensors(root, "", tensors)
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise UserError(f"{path}: corrupt TorchScript archive ({_one_line(exc)})") from exc
    return tensors


def _is_module(obj: object) -> bool:
    """A pickled nn.Module: a script object whose attribute dict has ``training``."""
    return isinstance(obj, _ScriptObject) and isinstance(obj.state, dict) and "training" in obj.state


def _collect_tensors(module: _ScriptObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Tensor attributes of `module` and its submodules, in attribute order, dotted keys."""
    assert isinstance(module.state, dict)
    for name, value in module.state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif _is_module(value):
            _collect_tensors(value, f"{prefix}{name}.", out)
