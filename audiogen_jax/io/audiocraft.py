"""audiocraft export packages and their training config (`xp.cfg`).

audiocraft exports a model (`state_dict.bin`, `compression_state_dict.bin`) as a `torch.save`d dict:
`best_state` (the model's state dict), `xp.cfg` (the whole training config as a YAML string, its
OmegaConf interpolations `${...}` unresolved), `version` and `exported`. `load_audiocraft_package`
reads one without torch; `YamlConfig` resolves the interpolations of the keys that are read. A
codec export may instead point to a pretrained model by name (`pretrained_pointer`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from audiogen_jax.io.errors import ConversionError
from audiogen_jax.io.torch_pickle import LazyTensor, load_torch_checkpoint

_INTERP = re.compile(r"\$\{([^}]*)\}")


class YamlConfig:
    """An OmegaConf-style YAML tree whose `${a.b}` interpolations are resolved lazily, on the keys
    read.

    audiocraft exports its training config unresolved (`encodec.sample_rate: ${sample_rate}`), and
    some keys we never read (`${oc.env:USER}`) cannot be resolved on every machine, so only what is
    asked for is resolved.
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
        """The resolved value at `dotted` ("a.b.0"); `default` if absent (an error if not given)."""
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


@dataclasses.dataclass(frozen=True)
class AudiocraftPackage:
    state: Mapping[str, LazyTensor | np.ndarray]  # `best_state`
    cfg: YamlConfig  # `xp.cfg`
    version: str | None  # the audiocraft version that exported it


def pretrained_pointer(obj: Any) -> str | None:
    """The model an export points to instead of holding weights, or None.

    audiocraft's `export_pretrained_compression_model` writes `{'pretrained': name, ...}` for a
    codec it did not train (`facebook/encodec_32khz`: a transformers EnCodec on the hub), and its
    loader then fetches that model (`CompressionModel.get_pretrained`).
    """
    if isinstance(obj, dict) and "pretrained" in obj and "best_state" not in obj:
        name = obj["pretrained"]
        if not isinstance(name, str):
            raise ConversionError(f"'pretrained' should name a model, got {type(name).__name__}")
        return name
    return None


def load_audiocraft_package(
    path: str | os.PathLike, what: str, obj: Any = None
) -> AudiocraftPackage:
    """Reads an audiocraft export (`state_dict.bin` or `compression_state_dict.bin`).

    Args:
      path: the file.
      what: what it should hold, for error messages ("LM", "compression (EnCodec)").
      obj: the file's contents when already read (`load_torch_checkpoint(path)`).
    """
    obj = load_torch_checkpoint(path) if obj is None else obj
    if not isinstance(obj, dict) or "best_state" not in obj or "xp.cfg" not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(
            f"{path} is not an audiocraft {what} checkpoint: expected a dict with 'best_state' "
            f"and 'xp.cfg', found {keys}"
        )
    if "pretrained" in obj:
        raise ConversionError(f"{path} points to another pretrained model ({obj['pretrained']!r})")
    cfg_text = obj["xp.cfg"]
    if not isinstance(cfg_text, str):
        raise ConversionError(
            f"{path}: 'xp.cfg' should be a YAML string, got {type(cfg_text).__name__}"
        )
    return AudiocraftPackage(obj["best_state"], YamlConfig.from_text(cfg_text), obj.get("version"))
