"""File helpers shared by every writer and checker (no torch import).

Writers never leave a half-written file: `atomic_output` hands out a temporary
path in the destination's folder and renames it over the destination only when
the block succeeds. Commands whose outputs are a folder (`run`, `export`) write
it as one unit with `output_folder` (below). These helpers, with `make_folder`,
are where every output path is created, so an output that cannot be written is
a UserError (one line, exit 2) in every command.

`output_folder(OUT)`:
- locks OUT for this process: the lock is ``.<name>.lock`` beside OUT, held with
  flock, so it is released whenever the process ends, kill -9 included; a second
  process asking for the same OUT meanwhile gets a UserError naming the holder's pid;
- removes what dead processes left in OUT's parent (``.<name>.staging-<pid>-<hex>``
  and ``.<name>.old-<pid>-<hex>`` whose pid is no longer running);
- hands out an empty staging folder ``.<name>.staging-<pid>-<hex>`` beside OUT
  and, when the block ends without an exception, puts it in OUT's place: the
  previous OUT is renamed aside, the staging folder renamed to OUT, the previous
  one deleted. On an exception the staging folder is deleted and OUT is as it was.
  After a crash at any point OUT holds the previous complete result or, between the
  two renames, nothing;
- refuses an OUT that is a file, or a non-empty folder without `marker` (the file
  every earlier result of the command has), so a folder of other files is never replaced.

`lock_output` (the same lock) and `swap_in` (the same two renames) serve writers of an
incremental folder, `rvos-edge batch`, which holds the lock over its whole output folder
and swaps in one finished subfolder at a time.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from rvos_edge.errors import UserError


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks; a missing or unreadable file is a UserError."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return h.hexdigest()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {_reason(e)}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:                        # writing the temporary file or renaming it failed
        raise UserError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (a reader sees the old file or the new one)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create folder `path` and its parents (an existing folder is fine); a UserError when it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create folder {path}: it is a file") from None
    except OSError as e:
        raise UserError(f"cannot create folder {path}: {_reason(e)}") from None
    return path


_LEFTOVER = re.compile(r"^\..+\.(?:staging|old)-(\d+)-[0-9a-f]+$")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike[str], marker: str) -> Iterator[Path]:
    """Yield a staging folder that replaces folder `out` when the block succeeds (module docstring)."""
    out = Path(out)
    try:
        parent = make_folder(out.parent)
    except UserError as e:
        raise UserError(f"cannot write to output folder {out}: {e}") from None
    with lock_output(out):
        _check_replaceable(out, marker)
        _remove_leftovers(parent)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        staging = parent / f".{out.name}.staging-{token}"
        try:
            staging.mkdir()
        except OSError as e:
            raise UserError(f"cannot write to output folder {out}: {_reason(e)}") from None
        try:
            yield staging
            _swap_in(staging, out, parent / f".{out.name}.old-{token}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def lock_output(out: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside `out` (flock), the lock `output_folder` takes; a UserError naming the
    holder's pid when another process has it. `rvos-edge batch` holds it over its whole output folder."""
    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write to output folder {out}: {_reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock output folder {out}: {_reason(e)}") from None
            raise UserError(f"output folder {out} is in use by process {holder or '(unknown pid)'}, another "
                            "rvos-edge writing it: wait for it to finish or choose another output") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                    # the holder before us removed the file as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def _check_replaceable(out: Path, marker: str) -> None:
    """`out` may be replaced: it does not exist, is an empty folder, or holds `marker` (an earlier result)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"cannot write to output folder {out}: it exists and is not a folder")
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {_reason(e)}") from None
    if not empty and not (out / marker).is_file():
        raise UserError(f"output folder {out} holds other files (no {marker} of an earlier result) and would be "
                        "replaced: choose another output or empty it")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # alive, another user's
        return True
    return True


def _remove_leftovers(parent: Path) -> None:
    """Delete staging and set-aside folders in `parent` whose process is no longer running."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            found = _LEFTOVER.match(entry.name)
            if found and not _pid_running(int(found.group(1))):
                shutil.rmtree(entry, ignore_errors=True)


def swap_in(staging: Path, out: Path, aside_dir: Path | None = None) -> None:
    """Put folder `staging` in place of folder `out` (as `output_folder` does at its end): after a crash
    `out` holds the previous folder or, between the two renames, nothing. The previous `out` is set
    aside in `aside_dir` (default: beside `out`, on the same filesystem) and deleted."""
    aside = (aside_dir or out.parent) / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    _swap_in(staging, out, aside)


def _swap_in(staging: Path, out: Path, aside: Path) -> None:
    """Put `staging` in place of `out`; the previous `out` goes to `aside` first and is deleted after."""
    try:
        if out.exists():
            os.rename(out, aside)
        os.rename(staging, out)
    except OSError as e:
        if aside.exists():
            os.rename(aside, out)
        raise UserError(f"cannot write to output folder {out}: {_reason(e)}") from None
    shutil.rmtree(aside, ignore_errors=True)
