"""A warm start: JAX's persistent compilation cache, on by default for `AudioGen` and the CLI.

Compiling the generation program takes seconds (about 10 s for AudioGen-medium on a 2-core CPU),
and every new process compiled it again. JAX can keep compiled programs on disk, keyed by the
program, the JAX/XLA versions and the device; a later process that builds the same program loads
it instead of compiling (https://docs.jax.dev/en/latest/persistent_compilation_cache.html).
`AudioGen.from_pretrained` and `audiogen-jax generate` turn it on, in

    $AUDIOGEN_JAX_COMPILATION_CACHE   if set: a directory, or 0 / off / false / none to turn it off
    <cache root>/xla                  otherwise (`audiogen.cache_root()`: $AUDIOGEN_JAX_CACHE or
                                      ~/.cache/audiogen_jax)

unless the process already chose a directory for JAX (`jax_compilation_cache_dir`, e.g. through
`JAX_COMPILATION_CACHE_DIR`), which is left as it is. `from_pretrained(compilation_cache=...)`
and the CLI's `--compilation-cache DIR` / `--no-compilation-cache` override the default.

Every program is written, however quickly it compiled (JAX's default keeps only those over 1 s):
the codec, loudness and small set-up programs add up to seconds of a start as well. A program
holding a Python callback is never written by JAX; generation reports progress without one (see
`generate.py`).

A hit still traces and lowers the program to compute its key; `program_cache.py` keeps the model's
executables in `<directory>/programs/` under keys computed without tracing, on the same switch.

Like any compilation cache, the directory is trusted: whoever can write to it can make this process
run code. Keep it private (the default is under your home directory).
"""

from __future__ import annotations

import os

import jax

ENV = "AUDIOGEN_JAX_COMPILATION_CACHE"
_OFF = ("", "0", "off", "false", "none", "no")
SUBDIR = "xla"  # under the project's cache root


def default_directory(cache_root: str) -> str | None:
    """Where the cache goes by default: $AUDIOGEN_JAX_COMPILATION_CACHE, else cache_root/xla;
    None when the variable turns it off."""
    value = os.environ.get(ENV)
    if value is None:
        return os.path.join(cache_root, SUBDIR)
    if value.strip().lower() in _OFF:
        return None
    return os.path.expanduser(value)


def directory() -> str | None:
    """The persistent compilation cache JAX uses in this process (None: none)."""
    return jax.config.jax_compilation_cache_dir


def enable(path: str | os.PathLike) -> str:
    """Turns JAX's persistent compilation cache on at `path` (created if needed), unless this
    process already uses one; returns the directory in use.

    Raises:
      ValueError: `path` exists and is not a directory, or cannot be created.
    """
    current = directory()
    if current:
        return current
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"compilation cache {path}: cannot create it ({e})") from e
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every program: below JAX's default 1 s threshold are the codec's and the set-up's
    # programs, which a start compiles too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
