"""Atomic writes: a reader never sees a half-written file or directory, and a crash never loses the previous one.

Files are written to a temporary sibling and renamed into place. Directories (models, galleries, evaluation and demo
outputs) are built in a staging folder beside the target, ``.<name>.bt2-stage-<pid>-<token>``, and swapped in at the
end: on Linux with one atomic ``renameat2(RENAME_EXCHANGE)``, elsewhere with two renames whose interruption the next
write (or :func:`recover_directory`) repairs. Until the swap the previous version is untouched; after it the new one
is complete. Staging folders left by a killed process are removed by the next write to the same target.

``BT2_HF_KILL_AFTER_FILE_OPS=k`` makes the process ``SIGKILL`` itself after its k-th file operation here: the
crash-safety tests use it to kill a save at every step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KILL_AFTER_FILE_OPS_ENV = "BT2_HF_KILL_AFTER_FILE_OPS"
_STAGE_MARK = ".bt2-stage-"
_PREVIOUS_MARK = ".bt2-prev-"
# staging folders of bt2_hf < 0.2 (model saves): random names with no owner, removed when their parent is written
_LEGACY_STAGING = re.compile(r"^\.bt2-save-[A-Za-z0-9_]{8}$")
_file_operations = 0
# The staging folders atomic_directory is building in this process (absolute path) and the directory each becomes.
_ACTIVE_STAGING: dict[str, Path] = {}


def file_operation_done() -> None:
    """Count one file operation; with ``BT2_HF_KILL_AFTER_FILE_OPS=k`` set, ``SIGKILL`` this process at the k-th.

    The crash tests run a save in a subprocess with k = 1, 2, … and check that the previous version survives each
    kill. Without the variable this only increments a counter.
    """
    global _file_operations
    _file_operations += 1
    limit = os.environ.get(KILL_AFTER_FILE_OPS_ENV)
    if limit and _file_operations >= int(limit):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync_also: Sequence[str | os.PathLike] = ()) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename.

    ``sync_also``: files whose content this write commits (e.g. rows appended to files that a manifest counts): they
    are fsynced together with the temporary file (:func:`fsync_together`), all before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync_also:
                fsync_together([tmp, *sync_also])
            else:
                os.fsync(handle.fileno())
        file_operation_done()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    file_operation_done()


def atomic_write_text(path: str | os.PathLike, text: str, sync_also: Sequence[str | os.PathLike] = ()) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), sync_also=sync_also)


_SYNC_POOL: ThreadPoolExecutor | None = None


def fsync_together(paths: Sequence[str | os.PathLike]) -> None:
    """fsync ``paths`` concurrently (threads): a disk takes them together. On the shared machine's disk three fsyncs
    one after the other took 16 ms, together 2-5 ms."""
    global _SYNC_POOL
    if _SYNC_POOL is None:
        _SYNC_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bt2-fsync")

    def sync(path) -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    for future in [_SYNC_POOL.submit(sync, path) for path in paths]:
        future.result()


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2,
                      sync_also: Sequence[str | os.PathLike] = ()) -> None:  # fmt: skip
    """Serialise ``obj`` as sorted, indented JSON and write it atomically (``sync_also``: see
    :func:`atomic_write_bytes`)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", sync_also=sync_also)


# -- directories -------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not inside another write to the same target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str, mark: str) -> int | None:
    match = re.match(rf"^.*{re.escape(mark)}(\d+)-[0-9a-f]+$", name)
    return int(match.group(1)) if match else None


def recover_directory(path: str | os.PathLike) -> None:
    """Repair what an interrupted directory write left beside ``path``.

    Restores the previous version when a two-rename swap (platforms without an atomic exchange) was interrupted
    between its renames, and removes staging folders and previous versions whose writing process is gone (plus the
    anonymous ``.bt2-save-*`` folders of older bt2_hf versions). Safe to call any time; a no-op when all is clean.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    stage_prefix, previous_prefix = f".{path.name}{_STAGE_MARK}", f".{path.name}{_PREVIOUS_MARK}"
    previous = []
    for entry in parent.iterdir():
        name = entry.name
        if name.startswith(previous_prefix):
            previous.append(entry)
        elif name.startswith(stage_prefix):
            pid = _owner_pid(name, _STAGE_MARK)
            if pid is None or not _pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
        elif _LEGACY_STAGING.match(name) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    for entry in sorted(previous, key=lambda p: p.stat().st_mtime, reverse=True):
        pid = _owner_pid(entry.name, _PREVIOUS_MARK)
        if pid is not None and _pid_alive(pid):
            continue
        if not path.exists():
            os.rename(entry, path)  # the swap was cut between its two renames: the previous version comes back
        else:
            shutil.rmtree(entry, ignore_errors=True)


def fsync_directory(directory: Path) -> None:
    """Make ``directory``'s entries (files created, renamed or removed there) durable."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(a: Path, b: Path, flags: int) -> int | None:
    """Linux ``renameat2(a, b, flags)``: 0 on success, the errno on failure, `None` where the call does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return 0
    return ctypes.get_errno()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); `False` where that is not available."""
    code = _renameat2(a, b, _RENAME_EXCHANGE)
    if code == 0:
        return True
    if code is None or code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a filesystem without the exchange: fall back to two renames
    raise OSError(code, f"could not swap {a} and {b}: {os.strerror(code)}")


_RENAME_NOREPLACE = 1


def _rename_noreplace(a: Path, b: Path) -> bool:
    """Rename ``a`` to ``b`` only if ``b`` does not exist, in one step (Linux ``renameat2(RENAME_NOREPLACE)``);
    `False` where that is not available. Raises `FileExistsError` when ``b`` exists."""
    code = _renameat2(a, b, _RENAME_NOREPLACE)
    if code == 0:
        return True
    if code is None or code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    if code == errno.EEXIST:
        raise FileExistsError(
            f"{b} appeared while this one was being built (another process created it); nothing was replaced. Pass "
            "overwrite=True (--overwrite) to replace it, or choose another output directory."
        )
    raise OSError(code, f"could not rename {a} to {b}: {os.strerror(code)}")


def _link_tree(source: Path, destination: Path) -> None:
    """Hard-link ``source`` (file or directory tree) to ``destination``; copy where links are not possible."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        destination.mkdir()
        for child in source.iterdir():
            _link_tree(child, destination / child.name)
    else:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)


def swap_into_place(staging: Path, path: Path) -> None:
    """Make the complete directory ``staging`` appear at ``path`` in one step; the previous version is removed after.

    ``staging`` must be a sibling of ``path`` (same filesystem). A crash before the swap leaves the previous version,
    after it the new one; :func:`recover_directory` cleans up either way.
    """
    fsync_directory(staging)
    if not path.exists():
        os.rename(staging, path)
        file_operation_done()
        fsync_directory(path.parent)
        return
    if _exchange(staging, path):
        file_operation_done()
        fsync_directory(path.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now the previous version
        file_operation_done()
        return
    previous = path.with_name(f".{path.name}{_PREVIOUS_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(path, previous)
    file_operation_done()
    os.rename(staging, path)
    file_operation_done()
    fsync_directory(path.parent)
    shutil.rmtree(previous, ignore_errors=True)
    file_operation_done()


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    overwrite: bool = True,
    keep_other_entries: bool = False,
    never_keep: Callable[[str], bool] | None = None,
) -> Iterator[Path]:
    """Build a directory in a staging folder beside ``path`` and swap it into place only when the block succeeds.

    If the block raises (or the process dies), ``path`` keeps its previous content, untouched, and the staging folder
    is removed (by the next write to ``path`` after a kill).

    Args:
        path (`str` or `os.PathLike`): the final directory.
        overwrite (`bool`, *optional*, defaults to `True`): replace an existing directory at ``path``; otherwise an
            existing one raises `FileExistsError` before anything is written.
        keep_other_entries (`bool`, *optional*, defaults to `False`): carry over (as hard links) the entries of the
            existing directory that the block did not write, e.g. the training logs and checkpoints beside a model.
        never_keep (`Callable[[str], bool]`, *optional*): with ``keep_other_entries``, names that must not be
            carried over even when the block did not write them (e.g. a previous model's stale weight shards).
    """
    path = Path(path)
    recover_directory(path)  # first: an interrupted earlier swap may have to put the previous version back
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass a directory.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another output directory.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}{_STAGE_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    staging.mkdir()
    file_operation_done()
    staging_key = os.path.abspath(staging)
    _ACTIVE_STAGING[staging_key] = path
    try:
        yield staging
        if keep_other_entries and path.is_dir():
            for entry in sorted(path.iterdir()):
                target = staging / entry.name
                if target.exists() or target.is_symlink() or (never_keep is not None and never_keep(entry.name)):
                    continue
                _link_tree(entry, target)
                file_operation_done()
        if overwrite:
            swap_into_place(staging, path)
        else:
            # the existence check above and the creation are one step: of two concurrent writers, one fails here
            fsync_directory(staging)
            if not _rename_noreplace(staging, path):
                if path.exists():
                    raise FileExistsError(f"{path} appeared while this one was being built; nothing was replaced.")
                os.rename(staging, path)
            file_operation_done()
            fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _ACTIVE_STAGING.pop(staging_key, None)


def final_location(path: str | os.PathLike) -> str:
    """Where ``path`` will be once the staging folders of :func:`atomic_directory` that hold it are swapped in.

    What a run records about its inputs (a reference model's path in ``config.json``, a card) must name them where they
    will live: a run built inside a staging folder (the demo's output, a model being saved) would otherwise record a
    ``.<name>.bt2-stage-…`` path that disappears at the swap. Anything else (a Hub id, a path outside staging folders)
    is returned unchanged.

    Args:
        path (`str` or `os.PathLike`): a path as a run was given it.

    Returns:
        `str`: the path after the swaps (relative if the final directory was given relative), or ``path`` unchanged.

    Example:

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_directory(target) as staging:
    ...     final_location(staging / "models" / "old") == str(target / "models" / "old")
    True
    ```
    """
    location = str(path)
    for _ in range(len(_ACTIVE_STAGING)):  # nested staging folders: the innermost is swapped first
        absolute = os.path.abspath(location)
        for staging, final in list(_ACTIVE_STAGING.items()):
            if absolute == staging or absolute.startswith(staging + os.sep):
                location = str(final / os.path.relpath(absolute, staging)) if absolute != staging else str(final)
                break
        else:
            break
    return location
