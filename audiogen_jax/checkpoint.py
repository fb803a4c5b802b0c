"""The converted-model directory: one `config.json` and one safetensors file per component.

    DIR/
      config.json               {"format": "audiogen-jax", "version": 2,
                                 "compression": {...}, "lm": {...}, "t5": {...},
                                 "conditioner": {...}}              (each section optional)
      compression.safetensors   EnCodec weights, keys = our NNX parameter paths
                                ("encoder.model.0.conv.kernel")
      lm.safetensors            LM weights (fp32 or bf16, as converted; kernels [in, out])
      conditioner.safetensors   the text conditioner's projection (written with the LM)
      t5.safetensors            T5 encoder weights
      tokenizer/spiece.model    the T5 sentencepiece model (and any tokenizer files that came with
                                it)
      manifest.json             size and sha256 of every file above, written last
      .verified.json            which file states (size, mtime, inode) were last hashed and found
                                to match the manifest (a cache; deleting it costs one re-hash)

Keys are the dotted paths of `nnx.to_flat_state(nnx.state(module))`, so loading is: build the
module's *shapes* from its config (`nnx.eval_shape`, no random init, no memory), then fill each
parameter from the file. Missing, unexpected or mis-shaped keys raise one error that lists all of
them.

Writers build the whole directory beside its destination and swap it in (`writing`, `atomic.py`),
so a reader never sees a mix of two conversions. `check_directory` refuses a directory whose files
do not match its manifest: sizes at every load (a `stat` per file), sha256 when the files changed
since they were last hashed on this machine (a copied directory: one pass over every byte) or when
asked (`hashes=True`). Every loaded floating-point tensor is checked to be finite (one float32
`sum` per tensor). The costs are measured in docs/security.md.

Versions: 2 stores every LM kernel [in, out] whatever the dtype (version 1 stored 16-bit kernels
[out, in]); the LM file says so in its header (`lm.py`), and the hub cache re-converts entries of
an older version.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import atomic
from audiogen_jax.io import safetensors
from audiogen_jax.io.errors import FormatError, short_list

FORMAT = "audiogen-jax"
VERSION = 2
CONFIG_FILE = "config.json"
WEIGHT_FILES = {
    "compression": "compression.safetensors",
    "lm": "lm.safetensors",
    "t5": "t5.safetensors",
}
TOKENIZER_DIR = "tokenizer"
MANIFEST_FILE = "manifest.json"
VERIFIED_FILE = ".verified.json"
MANIFEST_FORMAT = "audiogen-jax-manifest"
CONVERT_HELP = "python convert_weights.py --compression ... --lm ... --t5 ... --out DIR"
_CHUNK = 16 << 20  # bytes read at a time when hashing

M = TypeVar("M", bound=nnx.Module)
# Where each parameter of a module goes: {key: jax Sharding}, or a function of the abstract module.
Shardings = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


class CheckpointError(FormatError):
    """A converted directory that is missing, incomplete, or does not match its config."""


def read_config(directory: str | os.PathLike, section: str | None = None) -> dict[str, Any]:
    """DIR/config.json, or one section of it.

    Raises:
      CheckpointError: no or unreadable config.json, a newer format, or no such section (saying
        which `convert` flag writes it).
    """
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} is not a converted audiogen-jax directory (no {CONFIG_FILE}); "
            f"create one with `{CONVERT_HELP}`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"{path}: not an audiogen-jax config (format={found!r})")
    if not isinstance(cfg.get("version"), int) or cfg["version"] > VERSION:
        raise CheckpointError(
            f"{path}: format version {cfg.get('version')!r}; this audiogen-jax reads up to "
            f"{VERSION} (upgrade it, or convert again with this one)"
        )
    if section is None:
        return cfg
    if not isinstance(cfg.get(section), dict):
        raise CheckpointError(
            f"{directory} has no '{section}' model; convert it with "
            f"`convert_weights.py --{_flag(section)} ...`"
        )
    return cfg[section]


def _flag(section: str) -> str:
    # The conditioner's projection lives in the LM checkpoint, so `--lm` writes it.
    flags = {"compression": "compression", "lm": "lm", "t5": "t5", "conditioner": "lm"}
    return flags.get(section, section)


def is_current(directory: str | os.PathLike) -> bool:
    """Whether DIR holds a config.json of this format version (the conversion caches use this)."""
    try:
        return read_config(directory)["version"] == VERSION
    except CheckpointError:
        return False


def update_config(directory: str | os.PathLike, section: str, values: Mapping[str, Any]) -> None:
    """Adds or replaces one section of DIR/config.json, keeping the others (atomic rename)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CONFIG_FILE)
    cfg = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    cfg.update({"format": FORMAT, "version": VERSION, section: dict(values)})
    atomic.write_json(path, cfg, indent=2, sort_keys=True)


# --------------------------------------------------------------------------------------------------
# Whole directories: written beside their destination, sealed by a manifest, checked when loaded.


def _loaded_files(directory: str) -> list[str]:
    """The files loading reads, relative with '/' separators: config.json, the top-level
    safetensors files and the tokenizer directory."""
    names = [CONFIG_FILE] if os.path.isfile(os.path.join(directory, CONFIG_FILE)) else []
    names += sorted(
        n
        for n in os.listdir(directory)
        if n.endswith(".safetensors") and os.path.isfile(os.path.join(directory, n))
    )
    tok = os.path.join(directory, TOKENIZER_DIR)
    for root, _, files in os.walk(tok):
        for n in sorted(files):
            rel = os.path.relpath(os.path.join(root, n), directory)
            names.append(rel.replace(os.sep, "/"))
    return names


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _hashed_unchanged(directory: str, manifest: Any) -> dict[str, str]:
    """{file: sha256} of the manifest's files that were hashed in this state before (the stamp)."""
    stamp = _read_json(os.path.join(directory, VERIFIED_FILE))
    if not isinstance(manifest, dict) or not isinstance(stamp, dict):
        return {}
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    seen = stamp.get("files") if isinstance(stamp.get("files"), dict) else {}
    unchanged = {}
    for rel, entry in listed.items():
        path = os.path.join(directory, rel)
        if isinstance(entry, dict) and os.path.isfile(path) and seen.get(rel) == _stat_key(path):
            unchanged[rel] = entry.get("sha256")
    return unchanged


def _write_stamp(directory: str, files: list[str]) -> None:
    """Records that `files` were hashed in their current state (best effort: a read-only
    directory is simply hashed again at its next load)."""
    stamp = {"files": {rel: _stat_key(os.path.join(directory, rel)) for rel in files}}
    with contextlib.suppress(OSError):
        atomic.write_json(os.path.join(directory, VERIFIED_FILE), stamp, indent=1, sort_keys=True)


def write_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Writes DIR/manifest.json (size and sha256 of every file loading reads); call it last.

    Files unchanged since they were last hashed (same size, mtime and inode: the hard-linked files
    of an updated directory) keep their recorded hash instead of being read again.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST_FILE)
    known = _hashed_unchanged(directory, _read_json(path))
    files = {}
    for rel in _loaded_files(directory):
        full = os.path.join(directory, rel)
        sha = known.get(rel) or _sha256(full)
        files[rel] = {"size": os.path.getsize(full), "sha256": sha}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": files}
    atomic.write_json(path, manifest, indent=1, sort_keys=True)
    _write_stamp(directory, list(files))
    return manifest


@contextlib.contextmanager
def writing(
    directory: str | os.PathLike,
    *,
    keep_existing: bool = False,
    wait: bool = False,
    lock: bool = True,
) -> Iterator[str]:
    """Yields a temporary directory to write a converted model into; when the block ends, its
    manifest is written and it replaces `directory` in one step (see `atomic.replacing_directory`).

    Args:
      directory: the destination.
      keep_existing: start from `directory`'s current files (to add or replace components).
      wait: wait for another writer of `directory` instead of raising `atomic.BusyError`.
      lock: take the directory's lock; False when the caller holds it (`atomic.locked`).
    """
    directory = os.fspath(directory)
    if keep_existing and os.path.isdir(directory) and os.listdir(directory):
        if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
            raise CheckpointError(
                f"{directory} exists, is not empty and is not a converted audiogen-jax directory "
                f"(no {CONFIG_FILE}); give a new or empty directory"
            )
    with atomic.replacing_directory(
        directory, keep_existing=keep_existing, wait=wait, lock=lock
    ) as tmp:
        yield tmp
        write_manifest(tmp)


def _torn(directory: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{directory}: {what}. The directory is incomplete or was modified after conversion "
        f"(a torn or partial copy); convert it again (`{CONVERT_HELP}`) or copy it whole"
    )


def check_directory(directory: str | os.PathLike, hashes: bool | None = None) -> None:
    """Refuses a converted directory that does not match its manifest.

    Args:
      directory: a converted directory.
      hashes: True: check every file's sha256; False: sizes only; None (default): sizes, and
        sha256 of the files that changed since they were last hashed here (a copied directory is
        hashed once, at its first load).

    Raises:
      CheckpointError: no manifest, a listed file missing or of another size or hash, or a file
        that loading reads but the manifest does not list; saying how to re-convert.
    """
    directory = os.fspath(directory)
    manifest = _read_json(os.path.join(directory, MANIFEST_FILE))
    if manifest is None:
        raise _torn(
            directory,
            f"no readable {MANIFEST_FILE} (it is written last, so the conversion did not finish, "
            "or an older audiogen-jax wrote the directory)",
        )
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise _torn(directory, f"{MANIFEST_FILE} is not an audiogen-jax manifest")
    unlisted = sorted(set(_loaded_files(directory)) - set(files))
    if unlisted:
        raise _torn(directory, f"files not in {MANIFEST_FILE}: {short_list(unlisted)}")
    for rel, entry in sorted(files.items()):
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            raise _torn(directory, f"{rel} is missing")
        size = os.path.getsize(path)
        if not isinstance(entry, dict) or entry.get("size") != size:
            want = entry.get("size") if isinstance(entry, dict) else entry
            raise _torn(directory, f"{rel} has {size} bytes, the manifest says {want}")
    if hashes is False:
        return
    known = {} if hashes else _hashed_unchanged(directory, manifest)
    for rel, entry in sorted(files.items()):
        if rel not in known and _sha256(os.path.join(directory, rel)) != entry.get("sha256"):
            raise _torn(directory, f"{rel} does not match its sha256 in {MANIFEST_FILE}")
    if len(known) < len(files):
        _write_stamp(directory, list(files))


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether DIR is a converted directory of this format version whose files match their
    manifest's sizes (the conversion caches use this to decide whether to convert again)."""
    try:
        check_directory(directory, hashes=False)
    except CheckpointError:
        return False
    return is_current(directory)


def path_key(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


class _ShapeOnlyRngs:
    """Stands in for `nnx.Rngs` in a module built only for its shapes (`nnx.eval_shape`): every
    stream (`rngs.params()`, ...) gives one fixed key, and nothing is counted.

    A counted `nnx.Rngs` makes that build quadratic in the model's size: each count update asks the
    traced value for its sharding, and JAX answers with an error whose message walks the whole
    trace so far (flax 0.12, JAX 0.10). AudioGen-medium's LM took 12.6 s to build as shapes with
    `nnx.Rngs(0)`, 1.1 s with this. Outside a shape-only build it would give every weight the same
    draw: use it only there.
    """

    def __getattr__(self, stream: str) -> _ShapeOnlyRngs:
        return self

    def __call__(self) -> jax.Array:
        return jax.random.key(0)


SHAPE_ONLY_RNGS: Any = _ShapeOnlyRngs()


def abstract_module(factory: Callable[[], M]) -> M:
    """The module with `jax.ShapeDtypeStruct`s in place of arrays: shapes from the config, no
    allocation. Factories should build with `rngs=SHAPE_ONLY_RNGS` (fast; see there)."""
    return nnx.eval_shape(factory)


def param_specs(factory: Callable[[], nnx.Module]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{parameter path: (shape, dtype)} of the module `factory` builds, without building it."""
    _, state = nnx.split(abstract_module(factory))
    return {
        path_key(p): (tuple(v.get_value().shape), np.dtype(v.get_value().dtype))
        for p, v in nnx.to_flat_state(state)
    }


def open_weights(weights_path: str | os.PathLike) -> safetensors.SafetensorsFile:
    """A converted weights file opened for reading (its header read and checked)."""
    if not os.path.isfile(weights_path):
        raise CheckpointError(f"{weights_path}: no such weights file")
    try:
        return safetensors.SafetensorsFile(weights_path)
    except FormatError as e:
        raise CheckpointError(
            f"{e}; it looks incomplete or corrupt: convert it again (`{CONVERT_HELP}`)"
        ) from e


def load_module(
    factory: Callable[[], M],
    weights_path: str | os.PathLike,
    dtype: Any | None = None,
    transposed: Callable[[str], bool] = lambda key: False,
    shardings: Shardings | None = None,
    quantize: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None = None,
) -> M:
    """Builds the module from its factory's shapes and fills every parameter from a weights file.

    Every tensor is memory-mapped (`SafetensorsFile.map`) and placed with `jax.device_put`. One
    held exactly as stored needs no copy at all on a CPU device: the weights are the file's pages
    in the page cache, shared with any other process using the same file, and loading costs little
    more than mapping them. One held in another dtype or transposed (`transposed`) is laid out once
    into a new buffer, straight from its own mapping, which is then released; so peak host memory
    stays near the model plus its largest tensor. (Reading into a fresh buffer first cost more than
    the layout: the kernel zeroes and maps each new page, ~0.7 GB/s here, against ~0.2 s to map
    3.7 GB already in the page cache. `jnp.asarray` would copy each tensor once more, through a
    small compiled program per shape.) A file whose data section is not 64-byte aligned (written
    before the writer aligned it) is copied once as it is placed: same values, slower. A weight
    held in int8 (`quantize`) is made the same way, straight from its own mapping, so its float
    copy lives only while its int8 is made: no float model is ever held beside the int8 one.

    Args:
      factory: builds the module (called under `nnx.eval_shape`, so it costs nothing).
      weights_path: a safetensors file whose keys are the module's parameter paths.
      dtype: cast floating-point weights to this dtype; default keeps the file's dtype.
      transposed: which keys the module holds transposed from the file (2-D kernels whose layout
        is chosen at load time, see `lm.py`).
      shardings: {key: jax Sharding} for the module, or a function of the abstract module giving
        it (`sharding.loader`): each device then receives only its own shard of each tensor, cut
        on the host, so no device ever holds a whole model it was not meant to.
      quantize: how to make a weight the module holds in int8 from the file's float tensor (after
        any transpose): float -> (int8 values, float32 scale), the scale held beside it as
        `<key>_scale`, which the file does not have (`lm.py` passes `int8.quantize_kernel`).
        Under `shardings` it runs on the float shards, each result placed at its own sharding.
    """
    abstract = abstract_module(factory)
    if callable(shardings):
        shardings = shardings(abstract)
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    f = open_weights(weights_path)
    want = {path_key(p): v for p, v in flat}
    # Held in int8, stored as floats: quantized as it is read.
    quantized = {
        k
        for k, v in want.items()
        if quantize and k in f and _int8_from_float(v.get_value().dtype, f[k].dtype)
    }
    scales = {f"{key}_scale" for key in quantized}
    missing = sorted(set(want) - set(f) - scales)
    unexpected = sorted(set(f) - set(want))
    misshaped = []
    for key in sorted(set(want) & set(f)):
        shape = f[key].shape[::-1] if transposed(key) else f[key].shape
        if shape != tuple(want[key].get_value().shape):
            misshaped.append(f"{key}: file {shape} vs config {tuple(want[key].get_value().shape)}")
    if missing or unexpected or misshaped:
        lines = []
        if missing:
            lines.append(f"missing ({len(missing)}): {short_list(missing)}")
        if unexpected:
            lines.append(f"unexpected ({len(unexpected)}): {short_list(unexpected)}")
        if misshaped:
            lines.append(f"mis-shaped ({len(misshaped)}): {'; '.join(misshaped[:20])}")
        raise CheckpointError(f"{weights_path} does not match its config:\n  " + "\n  ".join(lines))
    for path, var in flat:
        key = path_key(path)
        if key in scales:
            continue  # set with its kernel
        stored = f[key].dtype
        cast = dtype is not None and jnp.issubdtype(stored, jnp.floating) and stored != dtype
        as_stored = not (transposed(key) or cast or key in quantized)
        in_place = as_stored and f.mappable(key)
        try:
            arr = f.map(key, own=not in_place)
        except FormatError as e:
            raise CheckpointError(f"{e}; the file looks incomplete: convert it again") from e
        _check_finite(arr, key, weights_path)
        if shardings is not None and key in quantized:
            # The float shards go where the int8 ones will (same shape); a reduction in `quantize`
            # then runs across them, as it would over the whole tensor.
            floats = _put_shards(arr, shardings[key], transposed(key), None)
            q, scale = _quantize(floats, quantize, False)
            var.set_value(jax.device_put(q, shardings[key]))
            want[f"{key}_scale"].set_value(jax.device_put(scale, shardings[f"{key}_scale"]))
            continue
        if shardings is not None:
            var.set_value(_put_shards(arr, shardings[key], transposed(key), dtype))
            continue
        value = jax.device_put(arr)
        if key in quantized:
            value, scale = _quantize(value, quantize, transposed(key))
            want[f"{key}_scale"].set_value(scale)
        elif not as_stored:
            value = _relayout(value, transposed(key), jnp.dtype(dtype) if cast else value.dtype)
        if not in_place:
            value.block_until_ready()  # done with the tensor's own mapping: release it
        del arr
        var.set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _int8_from_float(held, stored) -> bool:
    return jnp.dtype(held) == jnp.int8 and jnp.issubdtype(stored, jnp.floating)


def _put_shards(arr: np.ndarray, sharding, transpose: bool, dtype) -> jax.Array:
    """A global array with each addressable device's shard cut (and cast) from the host copy."""
    host = arr.T if transpose else arr
    if dtype is not None and jnp.issubdtype(host.dtype, jnp.floating):
        dtype = np.dtype(dtype)
    else:
        dtype = host.dtype
    return jax.make_array_from_callback(
        host.shape, sharding, lambda index: np.ascontiguousarray(host[index], dtype=dtype)
    )


def _check_finite(arr: np.ndarray, key: str, weights_path: str | os.PathLike) -> None:
    """Refuses NaN or infinite weights (they turn every generated code into one value)."""
    if arr.dtype.kind != "f" and arr.dtype != safetensors.DTYPES["BF16"]:
        return
    # A float32 sum runs at several GB/s and is non-finite whenever an element is; the exact
    # per-element test runs only then (a sum can also overflow on huge but finite weights).
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(arr.sum(dtype=np.float32)) or np.isfinite(arr.astype(np.float32)).all():
            return
    bad = int(arr.size - np.isfinite(arr.astype(np.float32)).sum())
    raise CheckpointError(
        f"{weights_path}: {key} holds {bad} NaN or infinite values; the weights are damaged (or "
        f"were trained into NaN): convert again from a good checkpoint (`{CONVERT_HELP}`)"
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _relayout(x: jax.Array, transpose: bool, dtype: jnp.dtype) -> jax.Array:
    # On the device: XLA's tiled transpose took about half the time of numpy's strided copy of a
    # bf16 kernel (docs/performance.md); one compile per distinct shape.
    return (x.T if transpose else x).astype(dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize(x: jax.Array, quantize: Callable, transpose: bool) -> tuple[jax.Array, jax.Array]:
    # One program per shape: its float32 temporaries stay inside it, only the int8 values and their
    # scale come out.
    return quantize(x.T if transpose else x)


def return_freed_memory() -> None:
    """Hands freed heap pages back to the OS after many tensors were made and dropped (glibc only).

    glibc serves blocks under 32 MB from its heap and keeps them when freed: after an int8 LM is
    loaded, the float copies its kernels were quantized from would otherwise stay in the process
    (40 MB of a 16-layer D 1536 LM, tests/test_lm_int8.py).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def save_module(
    module: nnx.Module,
    weights_path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    transposed: Callable[[str], bool] = lambda key: False,
) -> None:
    """Writes every parameter of `module` to a safetensors file (tests, saving a loaded model).

    Args:
      module: the module.
      weights_path: the file to write (atomically).
      metadata: string key/values for the file's header.
      transposed: which keys to write transposed (the inverse of `load_module`'s).
    """
    _, state = nnx.split(module)
    tensors = {}
    for p, v in nnx.to_flat_state(state):
        arr = np.asarray(jax.device_get(v.get_value()))
        tensors[path_key(p)] = arr.T if transposed(path_key(p)) else arr
    safetensors.save_file(weights_path, tensors, metadata)
