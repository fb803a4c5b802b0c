"""A warm start without tracing: the compiled generation programs kept on disk, keyed on the call.

JAX's persistent compilation cache (`compilation_cache.py`) spares a second process XLA's
compilation, but not the work that finds the cached program: tracing the Python model into a jaxpr
(the 48-layer LM, T5, EnCodec), lowering it to StableHLO and hashing that module for the cache key.
That was most of a second invocation's compile time (docs/performance.md, "Time to sound"). This
module keeps the *executable* of each program, `jax.experimental.serialize_executable`'s bytes, in

    <compilation cache directory>/programs/<function>-<install>-<sha256>.pkl

under a key computed from the call alone, without tracing:

  - the function (module and name) and this file's FORMAT;
  - its static arguments, by `repr`: the model's `GraphDef` (its structure and config), the
    sampling settings, the bucketed lengths, ... (a function among them is known by its name);
  - the structure of its array arguments and each one's type (shape, dtype, weak type) and
    sharding: the weights, the text bucket, the code buffer, the KV cache;
  - JAX's and jaxlib's versions, the backend, its version and devices, the host CPU's model and
    instruction-set flags (XLA:CPU compiles for the CPU it runs on, and a cache directory may be
    shared by machines), the JAX settings and `XLA_FLAGS` that change a program;
  - a hash of every source file of the `audiogen_jax` package, so an edit never meets an old entry.

`<install>` names the package sources and the JAX and jaxlib versions (12 hex digits). An entry
of another install can never be read again by this one, so each write removes them: an edit or an
upgrade leaves one set of programs, not one per version. (Two installs that share a directory
therefore remove each other's; give each its own with AUDIOGEN_JAX_COMPILATION_CACHE.)

A process that finds the file loads the executable and runs it: no tracing, no lowering, no
compilation. One that does not compiles ahead of time (`jit.trace(...).lower().compile()`) with
JAX's persistent cache switched off for that one compilation, writes the file atomically (a
temporary name, then a rename), and runs that same executable, so a cold and a warm run execute
the same computation. Why off: an executable JAX's cache hands back cannot be serialized again on
XLA:CPU (jaxlib 0.10.2); the copy loads, then fails when run (`NOT_FOUND: Function wrapped_iota
not found`). That happened whenever this file was missing but JAX's cache held the same program:
after an edit of the package (the key below changes, the program may not) or a deleted directory.
Donation is part of the executable. Within a process, each program is looked up once; later calls
with the same static arguments and types reuse it, as `jax.jit` does.

Why not `jax.export`: it carries the weights as arguments and a donated state (through a `jax.jit`
around `Exported.call`), but its serialization needs `flatbuffers`, an optional JAX dependency this
project does not install, and a deserialized `Exported` is still lowered into the caller's program
and hashed to find its executable in the persistent cache: part of the cost this removes.

Used where the compilation cache is on (`compilation_cache.directory()`: the same switch, off with
AUDIOGEN_JAX_COMPILATION_CACHE=off or `--no-compilation-cache`), for arguments on one device of a
single process; otherwise, and inside a caller's trace, the call is the plain `jax.jit` call. A file
that cannot be read back (torn, or from another build of jaxlib under the same version) is compiled
again and replaced.

Like the persistent cache, the directory is trusted: the files are pickles holding executables,
so whoever can write to it can make this process run code. Keep it private (the default is under
your home directory).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import platform
import re
import time
from typing import Any

import jax
import jaxlib
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from audiogen_jax import atomic, compilation_cache

FORMAT = 2  # bump when the key or the file layout changes
STALE_SECONDS = 3600  # a temporary this old is a killed writer's, not one still writing
SUBDIR = "programs"  # under the compilation cache directory
# JAX settings that change what a traced program computes or how it is compiled.
_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# A kept program's file name, its install tag in group 1 (no tag: this file's FORMAT 1).
_FILE = re.compile(r"^[A-Za-z0-9_]+-(?:([0-9a-f]{12})-)?[0-9a-f]{64}\.pkl$")
# `jax.monitoring` events, beside JAX's compile events (benchmarks/bench_startup.py counts them).
HIT = "/audiogen_jax/program_cache/hits"  # a program read from its file
MISS = "/audiogen_jax/program_cache/misses"  # a program compiled (and written)
READ_SECONDS = "/audiogen_jax/program_cache/read_duration"  # reading + loading the executable
WRITE_SECONDS = "/audiogen_jax/program_cache/write_duration"  # serializing + writing it

_loaded: dict[Any, jax.stages.Compiled] = {}  # this process's programs, by call signature


@functools.cache
def source_hash() -> str:
    """sha256 over the package's Python sources (paths and contents), read once per process."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read() + b"\0")
    return digest.hexdigest()


@functools.cache
def _host_cpu() -> str:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo), else what
    `platform` says of it."""
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                    found[key] = value.strip()
    except OSError:
        pass
    return repr(sorted(found.items())) if found else f"{platform.machine()} {platform.processor()}"


@functools.cache
def install_tag() -> str:
    """12 hex digits for this install: the package's sources and JAX's and jaxlib's versions."""
    text = f"{source_hash()} {jax.__version__} {jaxlib.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _environment() -> str:
    backend = jax.devices()[0].client
    config = [(name, str(getattr(jax.config, name, None))) for name in _CONFIG]
    return repr(
        (
            FORMAT,
            jax.__version__,
            jaxlib.__version__,
            backend.platform,
            backend.platform_version,
            [(str(d), d.device_kind) for d in jax.devices()],
            _host_cpu(),
            config,
            os.environ.get("XLA_FLAGS", ""),
            source_hash(),
        )
    )


def _arg_types(leaves: list[Any]) -> tuple[str, ...] | None:
    """Each array argument's type and placement; None when one is traced or spans devices."""
    types = []
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            return None
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and len(sharding.device_set) != 1:
            return None
        types.append(f"{jax.typeof(leaf)} {sharding}")
    return tuple(types)


def _path(fn: Any, static: dict[str, Any], treedef: Any, types: tuple[str, ...]) -> str | None:
    """The file of this call's program; None when the static arguments have no stable text."""
    text = _ADDRESS.sub("", repr(sorted(static.items())))
    name = f"{fn.__module__}.{getattr(fn, '__qualname__', fn.__name__)}"
    key = hashlib.sha256(
        "\n".join([_environment(), name, text, str(treedef), *types]).encode()
    ).hexdigest()
    directory = os.path.join(compilation_cache.directory(), SUBDIR)
    stem = name.rsplit(".", 1)[-1].strip("_<>")
    return os.path.join(directory, f"{stem}-{install_tag()}-{key}.pkl")


def _compile_afresh(fn: Any, args: tuple, static: dict[str, Any]) -> jax.stages.Compiled:
    """`fn`'s executable for these arguments, compiled by XLA, never read from JAX's persistent
    cache (whose executables cannot be serialized again: the module's docstring)."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()  # JAX decides once per process whether its cache is on: ask again
    try:
        return fn.trace(*args, **static).lower().compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        jax_cache.reset_cache()


def _read(path: str) -> jax.stages.Compiled | None:
    try:
        with open(path, "rb") as f:
            blob, in_tree, out_tree = pickle.load(f)
        return serialize_executable.deserialize_and_load(blob, in_tree, out_tree)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - torn or foreign file: compile again and replace it
        return None


def _write(path: str, compiled: jax.stages.Compiled) -> None:
    try:
        blob = pickle.dumps(serialize_executable.serialize(compiled))
    except (ValueError, NotImplementedError, TypeError, pickle.PicklingError):
        return  # a program JAX cannot serialize: it still runs, it is just not kept
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.replacing_file(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
    _remove_other_installs(os.path.dirname(path))


def _remove_other_installs(directory: str) -> None:
    """Deletes the kept programs of other installs (and of FORMAT 1, which had no tag), and
    temporaries that killed writers left more than `STALE_SECONDS` ago."""
    stale = time.time() - STALE_SECONDS
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        match = _FILE.match(name)
        with contextlib.suppress(OSError):  # another process may have removed it first
            if match and match.group(1) != install_tag():
                os.remove(path)
            elif ".pkl.partial-" in name and os.stat(path).st_mtime < stale:
                os.remove(path)


def call(fn: Any, *args: Any, **static: Any) -> Any:
    """`fn(*args, **static)` for a `jax.jit` function whose static arguments are all passed by
    keyword (and all its keyword arguments are static), through the kept executable.

    Returns:
      What `fn` returns; the same values as the plain call.
    """
    if compilation_cache.directory() is None or jax.process_count() > 1:
        return fn(*args, **static)
    leaves, treedef = jax.tree.flatten(args)
    types = _arg_types(leaves)
    if types is None:
        return fn(*args, **static)
    signature = (fn, tuple(sorted(static.items())), treedef, types)
    compiled = _loaded.get(signature)
    if compiled is None:
        path = _path(fn, static, treedef, types)
        start = time.perf_counter()
        compiled = _read(path)
        if compiled is not None:
            jax.monitoring.record_event(HIT)
            jax.monitoring.record_event_duration_secs(READ_SECONDS, time.perf_counter() - start)
        else:
            jax.monitoring.record_event(MISS)
            compiled = _compile_afresh(fn, args, static)
            start = time.perf_counter()
            _write(path, compiled)
            jax.monitoring.record_event_duration_secs(WRITE_SECONDS, time.perf_counter() - start)
        _loaded[signature] = compiled
    return compiled(*args)
