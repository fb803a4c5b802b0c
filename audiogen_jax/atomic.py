"""Outputs that appear whole or not at all: directories swapped in one step, files never clobbered.

    with atomic.replacing_directory("out/model") as tmp:    # a fresh .model.partial-<random>
        ...write everything into tmp...                     # beside out/model, same filesystem
    # out/model is now tmp's content; the previous out/model was kept until this one step

    atomic.commit_files([(staged, final), ...], overwrite=False)   # all or none, no clobbering

Directories: the new content is built in a uniquely named temporary directory beside the
destination and exchanged with it in one `renameat2(RENAME_EXCHANGE)` call (Linux); elsewhere the
old directory is renamed aside and the new one renamed in (two renames: for an instant the path is
missing, never torn). A lock file beside the destination (`.NAME.lock`, `fcntl.flock`) serialises
writers, so two conversions into one directory cannot lose each other's updates; without `fcntl`
(Windows) the unique temporary names alone still keep two writers from mixing their files.

Files: `replacing_file` gives a fresh temporary name beside a file and renames it over the file
when the block ends (`write_json` on top of it); `commit_files` moves staged files into place with
`os.link` (which fails when the name exists, so a concurrent writer is never clobbered), and takes
back what it placed if any one fails.

    with atomic.replacing_file("run/settings.json") as tmp, open(tmp, "w") as f:
        f.write(...)                                        # readers see the old file or the new
    atomic.write_json("run/settings.json", {"seed": 0}, indent=1)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; unique temporary names still prevent mixing
    fcntl = None

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class BusyError(OSError):
    """Another process holds the lock of the destination."""


def _partial_prefix(final: str) -> str:
    parent, name = os.path.split(final)
    return os.path.join(parent, f".{name}.partial-")


def lock_path(final: str | os.PathLike) -> str:
    """The lock file of a destination: `.NAME.lock` beside it (left in place: see `locked`)."""
    parent, name = os.path.split(os.path.realpath(final))
    return os.path.join(parent, f".{name}.lock")


@contextlib.contextmanager
def locked(final: str | os.PathLike, wait: bool) -> Iterator[None]:
    """Holds the advisory lock of `final` (its parent must exist).

    The lock file is never removed: removing it while another process waits on it would let a third
    process lock a new file of the same name while the waiter holds the old one.

    Args:
      final: the destination path.
      wait: block until the lock is free; otherwise raise `BusyError` at once.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(lock_path(final), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as e:
            raise BusyError(
                f"{final} is being written by another process (it holds {lock_path(final)}); "
                "wait for it to finish, or choose another destination",
            ) from e
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    res = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a filesystem without RENAME_EXCHANGE
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")


def _swap_in(tmp: str, final: str) -> None:
    """Puts directory `tmp` at `final`; the previous `final` (if any) is removed afterwards."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp)  # now holds the previous content
        return
    old = f"{_partial_prefix(final)}old-{uuid.uuid4().hex}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    # Hard links make carrying over a multi-GB directory free; writers here never modify a file
    # in place (they write a new file and rename it), so the previous directory stays intact.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def replacing_directory(
    final: str | os.PathLike,
    *,
    keep_existing: bool = False,
    wait: bool = False,
    lock: bool = True,
) -> Iterator[str]:
    """Yields a fresh temporary directory that replaces `final` in one step when the block ends.

    If the block raises, `final` is untouched and the temporary directory removed. Temporary
    directories left by killed writers (`.NAME.partial-*`) are removed by the next writer, which
    holds the lock, so none of them can still be in use.

    Args:
      final: the destination directory (its parent is created if needed).
      keep_existing: start from a copy (hard links) of `final`'s current files, to update it.
      wait: wait for another writer of `final` instead of raising `BusyError`.
      lock: take the lock; False when the caller already holds it (`locked`).
    """
    final = os.path.realpath(final)
    if os.path.exists(final) and not os.path.isdir(final):
        raise NotADirectoryError(f"{final} exists and is not a directory")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with locked(final, wait) if lock else contextlib.nullcontext():
        for stale in glob.glob(glob.escape(_partial_prefix(final)) + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = _partial_prefix(final) + uuid.uuid4().hex
        if keep_existing and os.path.isdir(final):
            shutil.copytree(final, tmp, symlinks=True, copy_function=_link_or_copy)
        else:
            os.mkdir(tmp)  # the umask's permissions, as a plain mkdir would give `final`
        try:
            yield tmp
            _swap_in(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replacing_file(final: str | os.PathLike) -> Iterator[str]:
    """Yields a fresh temporary name beside `final` (`.NAME.partial-<random>`), renamed onto
    `final` in one step (`os.replace`) when the block ends; removed instead if the block raises.

    Readers of `final` see its old content or its new content, never a torn file, and two writers
    never share a temporary name (the last rename wins). No lock: for one writer at a time, or
    writers that may overwrite each other whole.
    """
    final = os.fspath(final)
    tmp = _partial_prefix(final) + uuid.uuid4().hex
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # never created, or its folder is not one
            os.unlink(tmp)
        raise


def write_json(final: str | os.PathLike, value, **dump_options) -> None:
    """`json.dump(value, **dump_options)` into `final`, whole or not at all (`replacing_file`)."""
    with replacing_file(final) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, **dump_options)


def commit_files(moves: Sequence[tuple[str, str]], overwrite: bool) -> None:
    """Moves staged files to their final names: all of them, or none.

    Without `overwrite` an existing final name is never replaced, even one created by another
    process a moment ago (`os.link` fails when the name exists); if any move fails, the files
    already placed by this call are removed again. With `overwrite`, existing files are replaced
    (`os.replace`); a final name that is a directory is refused before anything moves.

    Args:
      moves: (staged path, final path) pairs; staged files sit on the final names' filesystem.
      overwrite: replace existing files.

    Raises:
      FileExistsError: a final name exists (and `overwrite` is off), or is a directory.
    """
    for _, dst in moves:
        if os.path.isdir(dst):
            raise FileExistsError(f"{dst} exists and is a directory")
    if overwrite:
        for src, dst in moves:
            os.replace(src, dst)
        return
    placed: list[str] = []
    try:
        for src, dst in moves:
            try:
                os.link(src, dst)
            except FileExistsError:
                raise FileExistsError(
                    f"{dst} already exists; overwriting was not asked for"
                ) from None
            except OSError:
                # A filesystem without hard links: check, then rename (a small window remains).
                if os.path.lexists(dst):
                    raise FileExistsError(
                        f"{dst} already exists; overwriting was not asked for"
                    ) from None
                os.rename(src, dst)
            placed.append(dst)
    except BaseException:
        for dst in placed:
            with contextlib.suppress(OSError):
                os.unlink(dst)
        raise
