"""Reading audiocraft / PyTorch checkpoints without torch, and mapping them onto our modules.

The released AudioGen files (`state_dict.bin`, `compression_state_dict.bin`) are `torch.save` zip archives
holding a pickled dict: `best_state` (the model's state dict), `xp.cfg` (the whole training config as a YAML
string, interpolations unresolved), `version` and `exported`. This module reads them with a restricted unpickler
that knows a short allow-list of globals and never imports torch: tensors come back as `LazyTensor`s that read
their bytes from the archive only when asked, so a 3.7 GB checkpoint is converted one tensor at a time.

Conversion is declarative: each component (`encodec.py`, `lm.py`, `t5.py`) gives a list of `Rule`s mapping
source keys onto the parameter paths of its own NNX module. `convert_state` checks that every source key is
consumed exactly once, every parameter is filled exactly once with the shape the config implies, and otherwise
raises one `ConversionError` that lists every missing, unexpected and mis-shaped key.

The command-line entry point is `convert_weights.py` at the repository root (and `audiogen-jax convert`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import yaml

from audiogen_jax.config import LMConfig

# torch storage class name -> numpy dtype. bfloat16 comes from ml_dtypes (a jax dependency).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
}


def _bfloat16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


class ConversionError(ValueError):
    """A checkpoint that does not fit the model its config describes."""


# --------------------------------------------------------------------------------------------------
# Restricted unpickling of torch zip archives.


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str  # name of the archive member under `data/` holding the raw bytes
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor inside a torch zip archive; `.numpy()` reads exactly its bytes."""

    archive: TorchArchive
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        return self.archive.read(self)


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
}


class TorchArchive:
    """A `torch.save` zip archive opened for lazy, torch-free reading."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as e:
            raise ConversionError(
                f"{self.path} is not a torch zip checkpoint (torch.save since 1.6 writes zip archives); "
                "legacy pickles can be read with `torch.load(..., weights_only=True)`"
            ) from e
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ConversionError(f"{self.path}: expected one data.pkl in the archive, found {pkl}")
        self._prefix = pkl[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in names and self._zip.read(byteorder).decode().strip() != "little":
            raise ConversionError(f"{self.path}: big-endian checkpoints are not supported")
        self._pickle_name = pkl[0]

    def load(self) -> Any:
        """Unpickles the archive's object, with tensors as `LazyTensor`s."""
        archive = self

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch" and name in _STORAGE_DTYPES:
                    return name
                if module == "torch" and name == "BFloat16Storage":
                    return name
                target = _TORCH_GLOBALS.get((module, name))
                if target is None:
                    raise ConversionError(
                        f"{archive.path}: refusing to unpickle global {module}.{name} "
                        "(only tensors, dicts and plain values are allowed in a checkpoint)"
                    )
                if target == "rebuild_tensor":
                    return archive._rebuild_tensor
                if target == "rebuild_parameter":
                    return lambda data, requires_grad, hooks: data
                return target

            def persistent_load(self, pid: Any) -> Any:
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                    raise ConversionError(f"{archive.path}: unknown persistent id {pid!r}")
                _, storage_type, key, _location, _numel = pid
                dtype = (
                    _bfloat16()
                    if storage_type == "BFloat16Storage"
                    else _STORAGE_DTYPES[storage_type]
                )
                return _Storage(key=str(key), dtype=dtype)

        with self._zip.open(self._pickle_name) as f:
            return _Unpickler(io.BytesIO(f.read())).load()

    def _rebuild_tensor(self, storage, offset, size, stride, *_ignored) -> LazyTensor:
        return LazyTensor(self, storage, int(offset), tuple(size), tuple(stride))

    def read(self, t: LazyTensor) -> np.ndarray:
        member = f"{self._prefix}data/{t.storage.key}"
        item = t.dtype.itemsize
        n = int(np.prod(t.shape, dtype=np.int64))
        contiguous = _contiguous_strides(t.shape) == t.stride
        with self._zip.open(member) as f:
            if contiguous:
                f.seek(t.offset * item)
                buf = f.read(n * item)
                return np.frombuffer(buf, dtype=t.dtype).reshape(t.shape).copy()
            raw = np.frombuffer(f.read(), dtype=t.dtype)
        view = np.lib.stride_tricks.as_strided(
            raw[t.offset :], shape=t.shape, strides=[s * item for s in t.stride]
        )
        return np.ascontiguousarray(view)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a torch.save file without torch; falls back to `torch.load(weights_only=True)` for legacy files."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return TorchArchive(path).load()
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path} is not a torch zip archive; reading a legacy pickle needs torch installed"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ConversionError(f"{path}: could not be read as a torch checkpoint: {e}") from e
    return _torch_to_numpy(obj)


def _torch_to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.bfloat16:
            return obj.float().numpy().astype(_bfloat16())
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _torch_to_numpy(v)) for k, v in obj.items())
    return obj


def as_numpy(t: LazyTensor | np.ndarray) -> np.ndarray:
    return t.numpy() if isinstance(t, LazyTensor) else np.asarray(t)


def shape_of(t: LazyTensor | np.ndarray) -> tuple[int, ...]:
    return tuple(t.shape)


# --------------------------------------------------------------------------------------------------
# audiocraft packages: {'best_state', 'xp.cfg', 'version', 'exported'}


@dataclasses.dataclass(frozen=True)
class AudiocraftPackage:
    state: Mapping[str, LazyTensor | np.ndarray]
    cfg: YamlConfig
    version: str | None


def load_audiocraft_package(path: str | os.PathLike, what: str) -> AudiocraftPackage:
    """Reads an audiocraft export (`state_dict.bin` or `compression_state_dict.bin`)."""
    obj = load_torch_checkpoint(path)
    if not isinstance(obj, dict) or "best_state" not in obj or "xp.cfg" not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(
            f"{path} is not an audiocraft {what} checkpoint: expected a dict with 'best_state' and "
            f"'xp.cfg', found {keys}"
        )
    if "pretrained" in obj:
        raise ConversionError(f"{path} points to another pretrained model ({obj['pretrained']!r})")
    cfg_text = obj["xp.cfg"]
    if not isinstance(cfg_text, str):
        raise ConversionError(
            f"{path}: 'xp.cfg' should be a YAML string, got {type(cfg_text).__name__}"
        )
    return AudiocraftPackage(obj["best_state"], YamlConfig.from_text(cfg_text), obj.get("version"))


_INTERP = re.compile(r"\$\{([^}]*)\}")


class YamlConfig:
    """An OmegaConf-style YAML tree whose `${a.b}` interpolations are resolved lazily, on the keys read.

    audiocraft exports its training config unresolved (`encodec.sample_rate: ${sample_rate}`), and some keys
    we never read (`${oc.env:USER}`) cannot be resolved on every machine, so resolve only what is asked for.
    """

    def __init__(self, tree: Mapping[str, Any]):
        self.tree = tree

    @classmethod
    def from_text(cls, text: str) -> YamlConfig:
        tree = yaml.safe_load(text)
        if not isinstance(tree, dict):
            raise ConversionError("xp.cfg is not a YAML mapping")
        return cls(tree)

    def get(self, dotted: str, default: Any = ...) -> Any:
        return self._resolve(self._lookup(dotted, default), dotted, depth=0)

    def has(self, dotted: str) -> bool:
        return self._lookup(dotted, None) is not None

    def _lookup(self, dotted: str, default: Any) -> Any:
        node: Any = self.tree
        for part in dotted.split("."):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                if default is ...:
                    raise ConversionError(f"xp.cfg has no key {dotted!r}")
                return default
        return node

    def _resolve(self, value: Any, where: str, depth: int) -> Any:
        if depth > 20:
            raise ConversionError(f"xp.cfg: interpolation loop at {where!r}")
        if isinstance(value, str):
            whole = _INTERP.fullmatch(value)
            if whole:
                return self._resolve(self._ref(whole.group(1), where), whole.group(1), depth + 1)
            if _INTERP.search(value):
                return _INTERP.sub(
                    lambda m: str(
                        self._resolve(self._ref(m.group(1), where), m.group(1), depth + 1)
                    ),
                    value,
                )
            return value
        if isinstance(value, Mapping):
            return {k: self._resolve(v, f"{where}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, f"{where}.{i}", depth) for i, v in enumerate(value)]
        return value

    def _ref(self, ref: str, where: str) -> Any:
        if ref.startswith("oc.env:"):
            name, _, default = ref[len("oc.env:") :].partition(",")
            if name in os.environ:
                return os.environ[name]
            if default:
                return default.strip()
            raise ConversionError(f"xp.cfg: {where!r} needs environment variable {name}")
        if ref.startswith("."):
            raise ConversionError(
                f"xp.cfg: relative interpolation ${{{ref}}} at {where!r} is not supported"
            )
        return self._lookup(ref, ...)


# --------------------------------------------------------------------------------------------------
# Declarative mapping.


@dataclasses.dataclass(frozen=True)
class Rule:
    """Maps the source keys matching `pattern` onto `targets` (templates using the regex's groups).

    All source keys that give the same targets form one group; `fn` receives them as {source_key: array}
    (in the order they appear in the checkpoint) and returns one array per target. Examples:
      weight norm:  (?P<m>.*)\\.weight_[gv]  ->  \\g<m>.kernel           fn folds g and v into one kernel
      packed qkv:   (.*)\\.in_proj_weight    ->  (\\1.q, \\1.k, \\1.v)     fn splits the rows in three
    """

    pattern: str
    targets: str | tuple[str, ...]
    fn: Callable[[dict[str, np.ndarray]], np.ndarray | tuple[np.ndarray, ...]] = lambda srcs: next(
        iter(srcs.values())
    )

    def target_tuple(self, m: re.Match) -> tuple[str, ...]:
        ts = (self.targets,) if isinstance(self.targets, str) else self.targets
        return tuple(m.expand(t) for t in ts)


@dataclasses.dataclass(frozen=True)
class _Group:
    rule: Rule
    sources: tuple[str, ...]
    targets: tuple[str, ...]


def plan_conversion(
    source_keys: Iterable[str],
    rules: list[Rule],
    expected: Mapping[str, tuple[int, ...]],
    ignore: Iterable[str] = (),
) -> list[_Group]:
    """Groups source keys by rule and checks coverage before any tensor is read.

    Raises one ConversionError listing unexpected source keys (no rule matched), keys claimed by two rules,
    and expected parameters that no rule fills or that two rules fill.
    """
    ignore_res = [re.compile(p) for p in ignore]
    compiled = [(r, re.compile(r.pattern)) for r in rules]
    groups: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    unexpected, doubly = [], []
    for key in source_keys:
        if any(p.fullmatch(key) for p in ignore_res):
            continue
        hits = [(i, r, m) for i, (r, p) in enumerate(compiled) if (m := p.fullmatch(key))]
        if not hits:
            unexpected.append(key)
            continue
        if len(hits) > 1:
            doubly.append(key)
        i, r, m = hits[0]
        groups.setdefault((i, r.target_tuple(m)), []).append(key)
    filled: dict[str, int] = {}
    plan = []
    for (i, targets), srcs in groups.items():
        plan.append(_Group(rules[i], tuple(srcs), targets))
        for t in targets:
            filled[t] = filled.get(t, 0) + 1
    missing = sorted(k for k in expected if k not in filled)
    unknown_targets = sorted(t for t in filled if t not in expected)
    twice = sorted(t for t, n in filled.items() if n > 1)
    problems = []
    if unexpected:
        problems.append(f"unexpected source keys ({len(unexpected)}): {_short(unexpected)}")
    if doubly:
        problems.append(f"source keys matched by several rules: {_short(doubly)}")
    if missing:
        problems.append(
            f"parameters missing from the checkpoint ({len(missing)}): {_short(missing)}"
        )
    if unknown_targets:
        problems.append(
            f"checkpoint fills parameters the config does not have: {_short(unknown_targets)}"
        )
    if twice:
        problems.append(f"parameters filled more than once: {_short(twice)}")
    if problems:
        raise ConversionError("checkpoint does not match its config:\n  " + "\n  ".join(problems))
    return plan


def _short(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def convert_state(
    state: Mapping[str, LazyTensor | np.ndarray],
    rules: list[Rule],
    expected: Mapping[str, tuple[int, ...]],
    ignore: Iterable[str] = (),
    dtype: np.dtype | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (parameter path, array) one group at a time; errors list every mis-shaped parameter.

    Shapes are checked group by group as tensors are read; the mis-shaped ones are collected and reported
    together at the end, so a single run names every problem.
    """
    plan = plan_conversion(state.keys(), rules, expected, ignore)
    misshaped = []
    for g in plan:
        arrays = {k: as_numpy(state[k]) for k in g.sources}
        out = g.rule.fn(arrays)
        outs = out if isinstance(out, tuple) else (out,)
        for name, arr in zip(g.targets, outs, strict=True):
            if tuple(arr.shape) != tuple(expected[name]):
                misshaped.append(
                    f"{name}: checkpoint gives {tuple(arr.shape)}, config wants {tuple(expected[name])}"
                )
                continue
            if dtype is not None and np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(dtype)
            yield name, arr
    if misshaped:
        raise ConversionError(
            "checkpoint shapes disagree with its config:\n  " + "\n  ".join(misshaped)
        )


def check_shapes(
    state: Mapping[str, LazyTensor | np.ndarray],
    rules: list[Rule],
    expected: Mapping[str, tuple[int, ...]],
    ignore: Iterable[str] = (),
) -> None:
    """Runs `convert_state` for its checks only (small checkpoints, or tests)."""
    for _ in convert_state(state, rules, expected, ignore):
        pass


# --------------------------------------------------------------------------------------------------
# Streaming safetensors writer: the header is known from the expected shapes, tensors are written as
# they are converted, so peak memory is one group of tensors, not the whole model.

_ST_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, in any order, given every name/shape/dtype up front."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = os.fspath(path)
        header: dict[str, Any] = {}
        self._offsets: dict[str, tuple[int, int, tuple[int, ...], np.dtype]] = {}
        pos = 0
        for name in sorted(specs):
            shape, dtype = specs[name]
            dtype = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": _ST_DTYPES[dtype.name],
                "shape": list(shape),
                "data_offsets": [pos, pos + n],
            }
            self._offsets[name] = (pos, n, tuple(shape), dtype)
            pos += n
        if metadata:
            header["__metadata__"] = dict(metadata)
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._data_start = 8 + len(blob)
        self._tmp = self.path + ".partial"
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._f.truncate(self._data_start + pos)
        self._written: set[str] = set()

    def write(self, name: str, arr: np.ndarray) -> None:
        start, n, shape, dtype = self._offsets[name]
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if tuple(arr.shape) != shape:
            raise ConversionError(f"{name}: shape {arr.shape} != {shape}")
        self._f.seek(self._data_start + start)
        self._f.write(arr.tobytes())
        self._written.add(name)

    def close(self) -> None:
        """Renames the file into place only when every tensor was written (never a half-written file)."""
        self._f.close()
        missing = set(self._offsets) - self._written
        if missing:
            os.remove(self._tmp)
            raise ConversionError(f"{self.path}: tensors never written: {_short(sorted(missing))}")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def write_converted(
    path: str | os.PathLike,
    converted: Iterator[tuple[str, np.ndarray]],
    specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Streams `convert_state`'s output into a safetensors file; removes the partial file on error."""
    writer = SafetensorsWriter(path, specs, metadata)
    try:
        for name, arr in converted:
            writer.write(name, arr)
    except BaseException:
        writer.abort()
        raise
    writer.close()


# --------------------------------------------------------------------------------------------------
# Entry points, one per component; `convert_weights.py` calls these. Each writes its weights file and its
# section of DIR/config.json (see checkpoint.py), never a half-written file.


# EnCodec (audiocraft `CompressionModel` exports). Torch keys -> our parameter paths:
#   X.model.i[.block.j|.shortcut].conv.conv.weight_{g,v} -> X.model.i[...].conv.kernel [k, Ci, Co]
#   decoder.model.i.convtr.convtr.weight_{g,v}       -> decoder.model.i.convtr.kernel [k, Ci, Co]
#   X.model.i.lstm.weight_ih_l{n} / weight_hh_l{n}   -> X.model.i.layers.n.kernel_ih / weight_hh
#   X.model.i.lstm.bias_{ih,hh}_l{n}                 -> X.model.i.layers.n.bias (the two summed)
#   quantizer.vq.layers.q._codebook.embed            -> quantizer.layers.q.embed
# (X = encoder or decoder; biases keep their names.)

_ENCODEC_IGNORE = [r"quantizer\.vq\.layers\.\d+\._codebook\.(?:inited|cluster_size|embed_avg)"]


def _fold_weight_norm(srcs: dict[str, np.ndarray]) -> np.ndarray:
    """torch weight (plain, or weight-norm g and v) -> the effective weight w = g * v / |v|.

    The norm runs over every axis but 0 (torch `weight_norm(dim=0)`); for a ConvTranspose1d, whose
    weight is [C_in, C_out, k], g is therefore per *input* channel.
    """
    by_suffix = {k.rsplit(".", 1)[1]: v for k, v in srcs.items()}
    if set(by_suffix) == {"weight"}:
        return by_suffix["weight"]
    if set(by_suffix) != {"weight_g", "weight_v"}:
        raise ConversionError(f"expected weight_g and weight_v (or weight), got {sorted(srcs)}")
    g = by_suffix["weight_g"].astype(np.float64)
    v = by_suffix["weight_v"].astype(np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (v * (g / norm)).astype(np.float32)


def _conv_kernel(srcs):  # Conv1d [C_out, C_in, k] -> [k, C_in, C_out]
    return _fold_weight_norm(srcs).transpose(2, 1, 0)


def _convtr_kernel(srcs):  # ConvTranspose1d [C_in, C_out, k] -> [k, C_in, C_out]
    return _fold_weight_norm(srcs).transpose(2, 0, 1)


def _sum_sources(srcs):
    return sum(v.astype(np.float32) for v in srcs.values())


_SEANET = r"(?P<m>(?:encoder|decoder)\.model\.\d+(?:\.block\.\d+|\.shortcut)?)"
_LSTM = r"(?P<m>(?:encoder|decoder)\.model\.\d+)\.lstm"
ENCODEC_RULES = [
    Rule(_SEANET + r"\.conv\.conv\.weight(?:_g|_v)?", r"\g<m>.conv.kernel", _conv_kernel),
    Rule(_SEANET + r"\.conv\.conv\.bias", r"\g<m>.conv.bias"),
    Rule(
        r"(?P<m>decoder\.model\.\d+)\.convtr\.convtr\.weight(?:_g|_v)?",
        r"\g<m>.convtr.kernel",
        _convtr_kernel,
    ),
    Rule(r"(?P<m>decoder\.model\.\d+)\.convtr\.convtr\.bias", r"\g<m>.convtr.bias"),
    Rule(
        _LSTM + r"\.weight_ih_l(?P<n>\d+)",
        r"\g<m>.layers.\g<n>.kernel_ih",
        lambda s: next(iter(s.values())).T,
    ),
    Rule(_LSTM + r"\.weight_hh_l(?P<n>\d+)", r"\g<m>.layers.\g<n>.weight_hh"),
    Rule(_LSTM + r"\.bias_(?:ih|hh)_l(?P<n>\d+)", r"\g<m>.layers.\g<n>.bias", _sum_sources),
    Rule(r"quantizer\.vq\.layers\.(?P<q>\d+)\._codebook\.embed", r"quantizer.layers.\g<q>.embed"),
]

# SEANet constructor defaults (audiocraft `SEANetEncoder.__init__`), used where xp.cfg omits a key.
_SEANET_DEFAULTS = {
    "n_residual_layers": 3,
    "ratios": [8, 5, 4, 2],
    "activation": "ELU",
    "activation_params": {"alpha": 1.0},
    "norm": "none",
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_base": 2,
    "causal": False,
    "pad_mode": "reflect",
    "true_skip": True,
    "compress": 2,
    "lstm": 0,
}


from audiogen_jax.config import EncodecConfig  # config.py is light and imports nothing of ours


def encodec_config_from_xp(cfg: YamlConfig, src: str = "checkpoint") -> EncodecConfig:
    """Reads an `EncodecConfig` from a compression xp.cfg (`encodec.*`, `seanet.*`, `rvq.*`).

    Raises ConversionError for anything the JAX codec does not implement (renormalize, other
    autoencoders/quantizers/activations/norms, encoder and decoder overrides that change the shared
    architecture), listing every problem at once.
    """
    if cfg.get("compression_model", "encodec") != "encodec":
        raise ConversionError(
            f"{src}: compression_model is {cfg.get('compression_model')!r}, not 'encodec'"
        )
    for section in ("encodec", "seanet", "rvq"):
        if not cfg.has(section):
            raise ConversionError(
                f"{src}: xp.cfg has no '{section}' section; not an EnCodec checkpoint"
            )
    enc = cfg.get("encodec")
    seanet = {**_SEANET_DEFAULTS, **cfg.get("seanet")}
    overrides = {
        "encoder": seanet.pop("encoder", None) or {},
        "decoder": seanet.pop("decoder", None) or {},
    }
    rvq = cfg.get("rvq")
    problems = []
    if enc.get("autoencoder", "seanet") != "seanet":
        problems.append(f"encodec.autoencoder={enc.get('autoencoder')!r} (only 'seanet')")
    if enc.get("quantizer", "rvq") != "rvq":
        problems.append(f"encodec.quantizer={enc.get('quantizer')!r} (only 'rvq')")
    if enc.get("renormalize", False) or enc.get("renorm", False):
        problems.append(
            "encodec.renormalize=true (per-item volume renormalisation not implemented)"
        )
    for name, values in overrides.items():
        allowed = (
            {"trim_right_ratio", "final_activation", "final_activation_params"}
            if name == "decoder"
            else set()
        )
        changed = sorted(k for k, v in values.items() if k not in allowed and seanet.get(k) != v)
        if changed:
            problems.append(
                f"seanet.{name} overrides {changed} (encoder and decoder must share them)"
            )
    if seanet["activation"] != "ELU":
        problems.append(f"seanet.activation={seanet['activation']!r} (only 'ELU')")
    if seanet["norm"] not in ("weight_norm", "none"):
        problems.append(f"seanet.norm={seanet['norm']!r} (only 'weight_norm' or 'none')")
    final = overrides["decoder"].get("final_activation")
    if final not in (None, "Tanh"):
        problems.append(f"seanet.decoder.final_activation={final!r} (only null or 'Tanh')")
    channels = enc.get("channels", seanet.get("channels", 1))
    if seanet.get("channels", channels) != channels:
        problems.append(f"seanet.channels={seanet.get('channels')} but encodec.channels={channels}")
    if "dimension" in rvq and rvq["dimension"] != seanet.get("dimension"):
        problems.append(
            f"rvq.dimension={rvq['dimension']} but seanet.dimension={seanet.get('dimension')}"
        )
    for key, where in (
        ("sample_rate", enc),
        ("dimension", seanet),
        ("n_filters", seanet),
        ("n_q", rvq),
        ("bins", rvq),
    ):
        if key not in where:
            problems.append(f"missing key {key!r}")
    if problems:
        raise ConversionError(f"{src}: unsupported EnCodec config:\n  " + "\n  ".join(problems))
    try:
        return EncodecConfig(
            sample_rate=int(enc["sample_rate"]),
            channels=int(channels),
            dimension=int(seanet["dimension"]),
            n_filters=int(seanet["n_filters"]),
            n_residual_layers=int(seanet["n_residual_layers"]),
            ratios=tuple(int(r) for r in seanet["ratios"]),
            kernel_size=int(seanet["kernel_size"]),
            last_kernel_size=int(seanet["last_kernel_size"]),
            residual_kernel_size=int(seanet["residual_kernel_size"]),
            dilation_base=int(seanet["dilation_base"]),
            causal=bool(seanet["causal"]),
            pad_mode=str(seanet["pad_mode"]),
            true_skip=bool(seanet["true_skip"]),
            compress=int(seanet["compress"]),
            lstm=int(seanet["lstm"]),
            elu_alpha=float((seanet["activation_params"] or {}).get("alpha", 1.0)),
            trim_right_ratio=float(overrides["decoder"].get("trim_right_ratio", 1.0)),
            final_activation=final,
            n_q=int(rvq["n_q"]),
            bins=int(rvq["bins"]),
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{src}: bad EnCodec config: {e}") from e


def convert_compression(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """audiocraft `compression_state_dict.bin` -> DIR/compression.safetensors + its config section.

    Folds weight norm into plain kernels, transposes to channels-last layouts, sums the LSTM biases
    and drops the RVQ training buffers. Refuses a codebook that was never initialised (`inited` 0:
    with k-means init its codewords are all zeros, so every frame would get code 0).
    """
    from flax import nnx

    from audiogen_jax import checkpoint
    from audiogen_jax.encodec import EncodecModel

    pkg = load_audiocraft_package(src, "compression (EnCodec)")
    keys = list(pkg.state.keys())
    if not any(k.startswith("encoder.model.") for k in keys) or not any(
        k.startswith("quantizer.") for k in keys
    ):
        raise ConversionError(
            f"{src} is not an EnCodec compression checkpoint: its weights have no encoder.model.* / "
            f"quantizer.* keys (first keys: {_short(keys, 3)}); an LM state_dict.bin goes to --lm"
        )
    cfg = encodec_config_from_xp(pkg.cfg, os.fspath(src))
    uninit = sorted(
        k for k in keys if k.endswith("._codebook.inited") and not np.all(as_numpy(pkg.state[k]))
    )
    if uninit:
        raise ConversionError(
            f"{src}: codebooks never initialised (inited == 0, all-zero k-means codewords): {_short(uninit)}"
        )
    specs = checkpoint.param_specs(lambda: EncodecModel(cfg, rngs=nnx.Rngs(0)))
    expected = {k: shape for k, (shape, _) in specs.items()}
    plan_conversion(
        keys, ENCODEC_RULES, expected, _ENCODEC_IGNORE
    )  # every key problem, before writing
    os.makedirs(out_dir, exist_ok=True)
    write_converted(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["compression"]),
        convert_state(
            pkg.state, ENCODEC_RULES, expected, _ENCODEC_IGNORE, dtype=np.dtype("float32")
        ),
        specs,
        metadata={"source": os.path.basename(os.fspath(src))},
    )
    checkpoint.update_config(out_dir, "compression", cfg.to_dict())


# --------------------------------------------------------------------------------------------------
# The transformer LM (audiocraft `LMModel` exports): config reading and key mapping for `convert_lm`.

# audiocraft `T5Conditioner.MODELS_DIMS`: the text encoder's width, by name.
LM_T5_DIMS = {
    "t5-small": 512,
    "t5-base": 768,
    "t5-large": 1024,
    "t5-3b": 1024,
    "t5-11b": 1024,
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
    "google/flan-t5-3b": 1024,
    "google/flan-t5-11b": 1024,
}
LM_OUTPUT_PROJ = "condition_provider.conditioners.description.output_proj"
# Keys audiocraft's `load_lm_model` deletes from old configs before building the model.
_LM_OBSOLETE_KEYS = (
    "conditioners.self_wav.chroma_stem.cache_path",
    "conditioners.args.merge_text_conditions_p",
    "conditioners.args.drop_desc_p",
)


def lm_config_from_audiocraft(
    xp: YamlConfig, output_proj_shape: tuple[int, ...] | None
) -> tuple[LMConfig, dict]:
    """Reads an audiocraft `xp.cfg` into an `LMConfig` and the conditioner section of config.json.

    Raises one ValueError listing every setting this port does not implement.

    Args:
      xp: the checkpoint's training config.
      output_proj_shape: shape of the T5 output projection weight [D, C] in the checkpoint, if present.

    Returns:
      (LMConfig, {"input_dim": C, "output_dim": D, "name": t5 name}).
    """
    for dotted in _LM_OBSOLETE_KEYS:
        *parents, leaf = dotted.split(".")
        node = xp.tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)

    def tl(key, default=None):
        return xp.get(f"transformer_lm.{key}", default)

    problems = []

    def want(what, value, ok):
        if not ok:
            problems.append(f"{what} = {value!r}")

    lm_model = xp.get("lm_model", "transformer_lm")
    want("lm_model (only 'transformer_lm')", lm_model, lm_model == "transformer_lm")
    want(
        "transformer_lm.norm (only 'layer_norm')",
        tl("norm", "layer_norm"),
        tl("norm", "layer_norm") == "layer_norm",
    )
    want(
        "transformer_lm.norm_first (only true: pre-norm)",
        tl("norm_first", False),
        tl("norm_first", False) is True,
    )
    pos = tl("positional_embedding", "sin")
    want("transformer_lm.positional_embedding (only 'sin')", pos, pos == "sin")
    act = tl("activation", "gelu")
    want("transformer_lm.activation (only 'gelu')", act, act == "gelu")
    for key in ("qk_layer_norm", "qk_layer_norm_cross"):
        want(f"transformer_lm.{key} (only false)", tl(key, False), not tl(key, False))
    want("transformer_lm.layer_scale (only null)", tl("layer_scale"), tl("layer_scale") is None)
    want("transformer_lm.kv_repeat (only 1)", tl("kv_repeat", 1), tl("kv_repeat", 1) == 1)
    want("transformer_lm.past_context (only null)", tl("past_context"), tl("past_context") is None)
    want("transformer_lm.causal (only true)", tl("causal", False), tl("causal", False) is True)
    # The builder forces cross-attention on when the fuser routes a condition to it.
    fuser = {
        m: list(xp.get(f"fuser.{m}", []) or [])
        for m in ("sum", "prepend", "cross", "input_interpolate")
    }
    want(
        "fuser (only cross: [description])",
        fuser,
        fuser["cross"] == ["description"]
        and not (fuser["sum"] or fuser["prepend"] or fuser["input_interpolate"]),
    )
    want(
        "fuser.cross_attention_pos_emb (only false)",
        xp.get("fuser.cross_attention_pos_emb", False),
        not xp.get("fuser.cross_attention_pos_emb", False),
    )
    # The builder falls back to transformer_lm.q_modeling when no pattern is configured.
    modeling = xp.get("codebooks_pattern.modeling", None) or tl("q_modeling")
    want("codebooks_pattern.modeling (only 'delay')", modeling, modeling == "delay")
    for key in ("flatten_first", "empty_initial"):
        v = xp.get(f"codebooks_pattern.delay.{key}", 0)
        want(f"codebooks_pattern.delay.{key} (only 0)", v, v == 0)
    conditioners = {k: v for k, v in (xp.get("conditioners", {}) or {}).items() if k != "args"}
    want(
        "conditioners (only a t5 'description')",
        sorted(conditioners),
        list(conditioners) == ["description"] and conditioners["description"].get("model") == "t5",
    )
    if problems:
        raise ValueError("unsupported LM checkpoint settings:\n  " + "\n  ".join(problems))

    n_q = int(tl("n_q"))
    dim = int(tl("dim"))
    t5_name = xp.get("conditioners.description.t5.name")
    condition_dim = LM_T5_DIMS.get(t5_name)
    if output_proj_shape is not None:
        if tuple(output_proj_shape)[:1] != (dim,) or len(output_proj_shape) != 2:
            raise ValueError(
                f"{LM_OUTPUT_PROJ}.weight has shape {tuple(output_proj_shape)}, expected [{dim}, C]"
            )
        if condition_dim is not None and output_proj_shape[1] != condition_dim:
            raise ValueError(
                f"{LM_OUTPUT_PROJ}.weight has input width {output_proj_shape[1]}, but {t5_name} "
                f"has width {condition_dim}"
            )
        condition_dim = int(output_proj_shape[1])
    if condition_dim is None:
        raise ValueError(
            f"unknown T5 model {t5_name!r} and no {LM_OUTPUT_PROJ}.weight to read its width from"
        )
    delays = xp.get("codebooks_pattern.delay.delays", None)
    delays = tuple(range(n_q)) if delays is None else tuple(int(d) for d in delays)
    gen = lambda key, default: xp.get(f"generate.lm.{key}", default)
    cfg = LMConfig(
        dim=dim,
        num_heads=int(tl("num_heads")),
        num_layers=int(tl("num_layers")),
        hidden_scale=float(tl("hidden_scale", 4)),
        n_q=n_q,
        card=int(tl("card")),
        delays=delays,
        condition_dim=condition_dim,
        max_period=float(tl("max_period", 10000.0)),
        positional_scale=float(tl("positional_scale", 1.0)),
        bias_ff=bool(tl("bias_ff", True)),
        bias_attn=bool(tl("bias_attn", True)),
        bias_proj=bool(tl("bias_proj", True)),
        cfg_coef=float(xp.get("classifier_free_guidance.inference_coef", 3.0)),
        max_duration=float(xp.get("dataset.segment_duration", 10.0)),
        use_sampling=bool(gen("use_sampling", True)),
        top_k=int(gen("top_k", 250)),
        top_p=float(gen("top_p", 0.0)),
        temperature=float(gen("temp", 1.0)),
    )
    conditioner = {"input_dim": condition_dim, "output_dim": dim, "name": t5_name}
    return cfg, conditioner


def lm_rules(param_dtype) -> list[Rule]:
    """Rules from audiocraft LM state-dict keys to `lm.LMModel` parameter paths (kernels in the dtype's layout)."""
    from audiogen_jax.lm import kernel_layout

    transpose = kernel_layout(param_dtype) == "in_out"  # torch stores nn.Linear weights [out, in]

    def kernel(srcs):
        (w,) = srcs.values()
        return w.T if transpose else w

    def split3(srcs):
        (w,) = srcs.values()
        parts = np.split(w, 3, axis=0)  # rows [q; k; v]
        return tuple(p.T if transpose and p.ndim == 2 else p for p in parts)

    layer = r"transformer\.layers\.(\d+)"
    attn = layer + r"\.(self_attn|cross_attention)\.(?:mha\.)?"
    qkv = lambda leaf: tuple(rf"transformer.layers.\1.\2.{p}_proj.{leaf}" for p in "qkv")
    same = lambda srcs: next(iter(srcs.values()))
    return [
        Rule(r"emb\.(\d+)\.weight", r"emb.\1.embedding"),
        Rule(attn + r"in_proj_weight", qkv("kernel"), split3),
        Rule(attn + r"in_proj_bias", qkv("bias"), split3),
        Rule(attn + r"out_proj\.weight", r"transformer.layers.\1.\2.out_proj.kernel", kernel),
        Rule(attn + r"out_proj\.bias", r"transformer.layers.\1.\2.out_proj.bias", same),
        Rule(layer + r"\.(linear1|linear2)\.weight", r"transformer.layers.\1.\2.kernel", kernel),
        Rule(layer + r"\.(linear1|linear2)\.bias", r"transformer.layers.\1.\2.bias", same),
        Rule(
            layer + r"\.(norm1|norm2|norm_cross)\.weight", r"transformer.layers.\1.\2.scale", same
        ),
        Rule(layer + r"\.(norm1|norm2|norm_cross)\.bias", r"transformer.layers.\1.\2.bias", same),
        Rule(r"out_norm\.weight", "out_norm.scale", same),
        Rule(r"out_norm\.bias", "out_norm.bias", same),
        Rule(r"linears\.(\d+)\.weight", r"linears.\1.kernel", kernel),
        Rule(r"linears\.(\d+)\.bias", r"linears.\1.bias", same),
    ]


def convert_lm(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> None:
    """audiocraft `state_dict.bin` -> DIR/lm.safetensors + config['lm'] (streams; needs no torch).

    Also writes the text conditioner's projection (`condition_provider.conditioners.description.output_proj`)
    to DIR/conditioner.safetensors (`kernel` [C, D] = weight.T, `bias` [D], float32) + config['conditioner'].
    Tensors are read, converted and written one group at a time, so peak memory stays near one layer's worth.
    """
    from flax import nnx

    from audiogen_jax import checkpoint
    from audiogen_jax import lm as lm_lib

    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"LM dtype must be float32 or bfloat16, got {dtype!r}")
    np_dtype = np.dtype("float32") if dtype == "float32" else _bfloat16()
    pkg = load_audiocraft_package(src, "LM")
    proj_w, proj_b = LM_OUTPUT_PROJ + ".weight", LM_OUTPUT_PROJ + ".bias"
    if proj_w not in pkg.state or proj_b not in pkg.state:
        raise ConversionError(
            f"{src}: no text-conditioner projection ({proj_w} / {proj_b}) in best_state"
        )
    try:
        cfg, conditioner = lm_config_from_audiocraft(pkg.cfg, shape_of(pkg.state[proj_w]))
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from e
    specs = checkpoint.param_specs(
        lambda: lm_lib.LMModel(cfg, rngs=nnx.Rngs(0), param_dtype=np_dtype)
    )
    expected = {k: shape for k, (shape, _) in specs.items()}
    rules = lm_rules(np_dtype)
    ignore = [re.escape(proj_w), re.escape(proj_b)]
    os.makedirs(out_dir, exist_ok=True)
    # Every key and shape problem, before reading or writing any tensor data: the rules run on zero-stride
    # stand-ins of the source shapes (no memory), so a bad full-size checkpoint fails in seconds.
    misshaped = []
    for g in plan_conversion(pkg.state.keys(), rules, expected, ignore):
        stand_ins = {k: np.broadcast_to(np.float32(0), shape_of(pkg.state[k])) for k in g.sources}
        outs = g.rule.fn(stand_ins)
        for name, arr in zip(g.targets, outs if isinstance(outs, tuple) else (outs,), strict=True):
            if tuple(arr.shape) != tuple(expected[name]):
                misshaped.append(
                    f"{name}: checkpoint gives {tuple(arr.shape)}, config wants {expected[name]}"
                )
    if misshaped:
        raise ConversionError(
            f"{src}: checkpoint shapes disagree with its config:\n  " + "\n  ".join(misshaped)
        )
    write_converted(
        os.path.join(out_dir, "lm.safetensors"),
        convert_state(pkg.state, rules, expected, ignore, dtype=np_dtype),
        specs,
        metadata={"source": os.path.basename(os.fspath(src)), "dtype": dtype},
    )
    weight = as_numpy(pkg.state[proj_w]).astype(np.float32)
    bias = as_numpy(pkg.state[proj_b]).astype(np.float32)
    D, C = cfg.dim, cfg.condition_dim
    if bias.shape != (D,):
        raise ConversionError(f"{src}: {proj_b} has shape {bias.shape}, config wants ({D},)")
    write_converted(
        os.path.join(out_dir, "conditioner.safetensors"),
        iter([("kernel", weight.T), ("bias", bias)]),
        {"kernel": ((C, D), np.dtype("float32")), "bias": ((D,), np.dtype("float32"))},
    )
    checkpoint.update_config(out_dir, "lm", cfg.to_dict())
    checkpoint.update_config(out_dir, "conditioner", conditioner)


_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_ST_NUMPY = {v: k for k, v in _ST_DTYPES.items()}


class _SafetensorsFile(Mapping):
    """A safetensors file read lazily with plain numpy (any dtype, bfloat16 included; no torch)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._header, self._start = header, 8 + n

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._header[key]
        name = _ST_NUMPY[info["dtype"]]
        dtype = _bfloat16() if name == "bfloat16" else np.dtype(name)
        begin, end = info["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            buf = f.read(end - begin)
        return np.frombuffer(buf, dtype=dtype.newbyteorder("<")).reshape(info["shape"])

    def __iter__(self):
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)


def _hf_file(src: str, name: str, local: bool, required: bool = True) -> str | None:
    """DIR/name for a local checkpoint; otherwise downloads that one file of hub repo `src`."""
    if local:
        path = os.path.join(src, name)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return hf_hub_download(src, name)
    except RemoteEntryNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, HTTP errors: one clear message
        if not required:
            return None
        raise ConversionError(
            f"{src!r} is not a local directory, and downloading {name} from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Offline, convert from a directory holding config.json, "
            "model.safetensors (or pytorch_model.bin) and spiece.model."
        ) from e


def _hf_t5_state(src: str, local: bool) -> Mapping[str, Any]:
    """The encoder's tensors of a HF checkpoint: one file, or only the shards that hold encoder keys."""
    import collections

    for name in _HF_WEIGHTS:
        path = _hf_file(src, name, local)
        if path is None:
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(
                {v for k, v in weight_map.items() if not k.startswith(("decoder.", "lm_head."))}
            )
            paths = [_hf_file(src, shard, local) for shard in shards]
            if None in paths:
                raise ConversionError(
                    f"{src}: shard {shards[paths.index(None)]} listed in {name} is missing"
                )
        else:
            paths = [path]
        maps = [
            _SafetensorsFile(p) if p.endswith(".safetensors") else load_torch_checkpoint(p)
            for p in paths
        ]
        return collections.ChainMap(*maps)
    raise ConversionError(f"{src}: no T5 weights found (looked for {', '.join(_HF_WEIGHTS)})")


def convert_t5(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """A Hugging Face T5 checkpoint (dir or hub id) -> DIR/t5.safetensors + DIR/tokenizer/ + config['t5'].

    `src` is a directory holding config.json, model.safetensors (or pytorch_model.bin, or their sharded
    index) and spiece.model; or a hub id such as "t5-large", from which only those files are downloaded. The
    decoder and LM head of a full encoder-decoder checkpoint are skipped; weights are stored as float32.
    """
    import shutil

    from flax import nnx

    from audiogen_jax import checkpoint, t5
    from audiogen_jax.config import T5Config

    src, out_dir = os.fspath(src), os.fspath(out_dir)
    local = os.path.isdir(src)
    if not local and os.path.exists(src):
        raise ConversionError(f"--t5 {src}: expected a directory (or a hub id), got a file")
    config_path = _hf_file(src, "config.json", local)
    if config_path is None:
        raise ConversionError(f"{src}: no config.json")
    with open(config_path) as f:
        cfg = T5Config.from_hf(json.load(f))
    spiece = _hf_file(src, t5.SPIECE, local)
    if spiece is None:
        raise ConversionError(
            f"{src}: no {t5.SPIECE} (the T5 tokenizer is needed next to the weights)"
        )
    state = _hf_t5_state(src, local)

    specs = checkpoint.param_specs(lambda: t5.T5EncoderModel(cfg, rngs=nnx.Rngs(0)))
    specs = {k: (shape, np.dtype("float32")) for k, (shape, _) in specs.items()}
    rules, ignore = t5.hf_conversion_rules(state.keys())
    os.makedirs(out_dir, exist_ok=True)
    converted = convert_state(
        state, rules, {k: s for k, (s, _) in specs.items()}, ignore, np.dtype("float32")
    )
    write_converted(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["t5"]),
        converted,
        specs,
        metadata={"source": src},
    )

    tok_dir = os.path.join(out_dir, checkpoint.TOKENIZER_DIR)
    tmp = tok_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in t5.TOKENIZER_FILES:
        path = spiece if name == t5.SPIECE else _hf_file(src, name, local, required=False)
        if path is not None:
            shutil.copyfile(path, os.path.join(tmp, name))
    n_ids = len(t5.load_tokenizer(tmp))
    if n_ids > cfg.vocab_size:
        shutil.rmtree(tmp)
        raise ConversionError(
            f"{src}: the tokenizer has {n_ids} ids but the model only {cfg.vocab_size}"
        )
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.replace(tmp, tok_dir)
    checkpoint.update_config(out_dir, "t5", cfg.to_dict())
