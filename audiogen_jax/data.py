"""Training data: captioned audio -> segments -> EnCodec codes and T5 states, cached once on disk.

Two layouts a user already has are read:

  - a folder of audio files, each with a same-named `.txt` caption (`dog.wav` + `dog.txt`), in any
    sub-folders;
  - audiocraft's format: a `data.jsonl` (or `.jsonl.gz`) manifest, one `{"path": ...}` per line
    (relative paths from the manifest's folder), and beside each audio file a same-named `.json`
    holding its `description` (audiocraft `SoundDataset` reads captions from there).

Each file is read with soundfile, mixed to mono and resampled to the codec's rate (`audio.py`, the
reference's `convert_audio`), and cut into consecutive segments of the training length (the
model's `max_duration`, 10 s for AudioGen; the remainder shorter than a segment is dropped, as the
released config's `min_segment_ratio: 1.0` drops short segments). Every segment is encoded once
with EnCodec, every caption once with the frozen T5, and both are written per source file into a
code cache; a rerun skips the files already there, so an interrupted preparation resumes. A file
that cannot be read, has no caption or is too short is reported by name and skipped.

Training batches (`CodeDataset.batch`) come from the cache: segment indices follow one
permutation per epoch drawn from (seed, epoch), so batch n is a pure function of (seed, n) and a
resumed run sees exactly the batches it would have seen. Text states are zero-padded to the
batch's longest caption, as the reference tokenizer pads (padding is not neutral: the LM's
cross-attention has no key mask, so padded positions take part in its softmax).

Why no data library (grain): after the one-time encoding the whole dataset is a few arrays of
int16 codes and float32 text states that fit in memory, and a batch is a gather. grain's strengths
(parallel decoding workers, sharded record files, checkpointable iterators) solve problems this
pipeline does not have; a permutation per epoch is its sampler in ten lines, with no dependency.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from audiogen_jax import atomic

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
MANIFESTS = ("data.jsonl", "data.jsonl.gz")
CACHE_FORMAT = 1
_ENCODE_CHUNK = 8  # segments per EnCodec call (a fixed shape: one compilation)


class DataError(ValueError):
    """Unusable training data (the message names the path and what to do)."""


@dataclasses.dataclass(frozen=True)
class Example:
    path: str  # audio file
    description: str


# --------------------------------------------------------------------------------------------------
# Finding captioned audio.


def _read_manifest(manifest: str) -> list[str]:
    opener = gzip.open if manifest.endswith(".gz") else open
    root = os.path.dirname(os.path.abspath(manifest))
    paths = []
    with opener(manifest, "rt") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                path = json.loads(line)["path"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{manifest}:{n}: not a manifest line with a 'path' ({e})") from e
            paths.append(path if os.path.isabs(path) else os.path.join(root, path))
    return paths


def _sidecar_description(audio: str) -> str | None:
    info = os.path.splitext(audio)[0] + ".json"
    if not os.path.isfile(info):
        return None
    try:
        with open(info) as f:
            value = json.load(f).get("description")
    except (ValueError, OSError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _caption(audio: str) -> str | None:
    txt = os.path.splitext(audio)[0] + ".txt"
    if not os.path.isfile(txt):
        return None
    with open(txt, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def find_examples(data: str | os.PathLike) -> tuple[list[Example], list[tuple[str, str]]]:
    """The captioned audio files of a folder or manifest.

    Args:
      data: a folder (audio + same-named .txt, or holding a data.jsonl manifest) or a .jsonl /
        .jsonl.gz manifest.

    Returns:
      (examples sorted by path, skipped [(path, reason)]).

    Raises:
      DataError: nothing usable (no audio at all, or no audio with a caption).
    """
    data = os.fspath(data)
    manifest = None
    if os.path.isfile(data) and data.endswith((".jsonl", ".jsonl.gz")):
        manifest = data
    elif os.path.isdir(data):
        found = [os.path.join(data, m) for m in MANIFESTS if os.path.isfile(os.path.join(data, m))]
        manifest = found[0] if found else None
    else:
        raise DataError(f"{data}: no such folder or .jsonl manifest")
    if manifest is not None:
        audio, describe, how = _read_manifest(manifest), _sidecar_description, "a .json"
    else:
        audio = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(data)
            for name in names
            if name.lower().endswith(AUDIO_EXTS)
        )
        describe, how = _caption, "a .txt"
    if not audio:
        raise DataError(
            f"{manifest or data}: no audio files ({', '.join(AUDIO_EXTS)}) found"
            + ("" if manifest else " (give a folder of audio files, each with a same-named .txt)")
        )
    examples, skipped = [], []
    for path in sorted(audio):
        text = describe(path)
        if not text:
            what = "no description" if text is None else "an empty description"
            skipped.append((path, f"{what} (expected {how} file beside it)"))
        else:
            examples.append(Example(path, text))
    if not examples:
        raise DataError(
            f"{manifest or data}: none of the {len(audio)} audio files has a caption "
            f"(each needs {how} file of the same name)"
        )
    return examples, skipped


# --------------------------------------------------------------------------------------------------
# Audio -> segments.


def read_segments(path: str, sample_rate: int, segment_samples: int) -> np.ndarray:
    """Reads a file, mono, at `sample_rate`, cut into consecutive segments.

    Returns:
      float32 [N, 1, segment_samples] (N may be 0 when the file is shorter than one segment).
    """
    import soundfile as sf

    from audiogen_jax import audio

    wav_WC, sr = sf.read(path, dtype="float32", always_2d=True)
    wav_CW = wav_WC.T
    if wav_CW.shape[1] == 0:
        return np.zeros((0, 1, segment_samples), np.float32)
    if sr != sample_rate or wav_CW.shape[0] != 1:
        wav_CW = np.asarray(audio.convert_audio(wav_CW, sr, sample_rate, 1))
    n = wav_CW.shape[1] // segment_samples
    return wav_CW[:, : n * segment_samples].reshape(n, 1, segment_samples)


def _file_digest(path: str, edge: int = 1 << 22) -> str:
    """Hash of a file's size and its first and last 4 MiB (fast on multi-GB weights)."""
    h = hashlib.sha256(str(os.path.getsize(path)).encode())
    with open(path, "rb") as f:
        h.update(f.read(edge))
        f.seek(max(0, os.path.getsize(path) - edge))
        h.update(f.read(edge))
    return h.hexdigest()[:16]


def model_fingerprint(model_dir: str) -> str:
    """Identifies the codec, T5 and tokenizer a cache was made with."""
    from audiogen_jax import checkpoint

    parts = [
        os.path.join(model_dir, checkpoint.WEIGHT_FILES["compression"]),
        os.path.join(model_dir, checkpoint.WEIGHT_FILES["t5"]),
        os.path.join(model_dir, checkpoint.TOKENIZER_DIR, "spiece.model"),
    ]
    return hashlib.sha256("".join(_file_digest(p) for p in parts).encode()).hexdigest()[:16]


@functools.cache
def _t5_jit():
    import jax

    return jax.jit(lambda encoder, ids_BL, mask_BL: encoder(ids_BL, mask_BL))


def _t5_states(encoder, ids_BL, mask_BL):
    """The frozen T5's last hidden states [B, L, C] (jitted; one compilation per text length)."""
    return _t5_jit()(encoder, ids_BL, mask_BL)


def _item_key(path: str) -> str:
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _check_meta(cache_dir: str, meta: dict) -> None:
    path = os.path.join(cache_dir, "meta.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise DataError(
                f"{cache_dir}: this code cache was made with other settings ({', '.join(diff)} "
                "differ); give another --cache folder or delete this one"
            )
    else:
        os.makedirs(os.path.join(cache_dir, "items"), exist_ok=True)
        atomic.write_json(path, meta, indent=1)


def prepare_cache(
    examples: Sequence[Example],
    cache_dir: str,
    *,
    codec,
    conditioner,
    model_dir: str,
    segment_seconds: float,
    progress: bool = True,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Encodes every example once into `cache_dir` (files already there are skipped).

    Args:
      examples: from `find_examples`.
      cache_dir: the code cache (created).
      codec: the model's `EncodecModel`.
      conditioner: the model's `T5Conditioner` (with its tokenizer).
      model_dir: the converted directory both came from (fingerprinted into the cache).
      segment_seconds: training segment length in seconds.
      progress: show a progress bar.

    Returns:
      (item keys in the cache, in example order; skipped [(path, reason)]).
    """
    import jax.numpy as jnp
    from tqdm import tqdm

    from audiogen_jax import t5

    segment_samples = int(round(segment_seconds * codec.sample_rate))
    if segment_samples < codec.hop_length:
        raise DataError(f"segment of {segment_seconds} s is shorter than one codec frame")
    meta = {
        "format": CACHE_FORMAT,
        "model": model_fingerprint(model_dir),
        "sample_rate": codec.sample_rate,
        "segment_samples": segment_samples,
    }
    _check_meta(cache_dir, meta)
    keys, skipped = [], []
    bar = tqdm(examples, desc="encoding", unit="file", disable=not progress, file=sys.stderr)
    for ex in bar:
        try:
            key = _item_key(ex.path)
        except OSError as e:
            skipped.append((ex.path, f"cannot be read ({e.strerror or e})"))
            continue
        item = os.path.join(cache_dir, "items", key + ".npz")
        if os.path.isfile(item):
            keys.append(key)
            continue
        try:
            segments = read_segments(ex.path, codec.sample_rate, segment_samples)
        except Exception as e:  # noqa: BLE001 - any decoding failure: report the file, go on
            skipped.append((ex.path, f"cannot be read as audio ({type(e).__name__}: {e})"))
            continue
        if len(segments) == 0:
            skipped.append((ex.path, f"shorter than one {segment_seconds:g} s segment"))
            continue
        codes = []
        for i in range(0, len(segments), _ENCODE_CHUNK):
            chunk = segments[i : i + _ENCODE_CHUNK]
            padded = np.zeros((_ENCODE_CHUNK, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            codes.append(np.asarray(codec.encode(padded))[: len(chunk)])
        ids, mask = t5.tokenize(conditioner.tokenizer, [ex.description])
        text_LC = np.asarray(_t5_states(conditioner.t5, jnp.asarray(ids), jnp.asarray(mask)))[0]
        with atomic.replacing_file(item) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                codes_NKT=np.concatenate(codes).astype(np.int16),
                text_LC=text_LC.astype(np.float32),
                description=np.asarray(ex.description),
                path=np.asarray(ex.path),
            )
        keys.append(key)
    return keys, skipped


# --------------------------------------------------------------------------------------------------
# Batches.


class CodeDataset:
    """The cached segments of a set of items, and seeded batches of them.

    Attributes:
      codes_NKT: int32 codes of every segment.
      text_of_N: for each segment, the index of its caption's states in `texts`.
      texts: float32 [L_i, C] T5 states per item.
    """

    def __init__(self, cache_dir: str, keys: Sequence[str]):
        codes, text_of, texts = [], [], []
        for i, key in enumerate(keys):
            with np.load(os.path.join(cache_dir, "items", key + ".npz")) as z:
                codes.append(z["codes_NKT"].astype(np.int32))
                texts.append(z["text_LC"])
            text_of.extend([i] * len(codes[-1]))
        if not codes:
            raise DataError(f"{cache_dir}: no encoded segments to train on")
        self.codes_NKT = np.concatenate(codes)
        self.text_of_N = np.asarray(text_of)
        self.texts = texts
        self._perm: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.codes_NKT)

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != (seed, epoch):
            self._perm = (
                (seed, epoch),
                np.random.default_rng([seed, epoch]).permutation(len(self)),
            )
        return self._perm[1]

    def indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Segment indices of batch `step`: the batch_size after step * batch_size in the stream of
        per-epoch permutations (a batch may straddle two epochs)."""
        out, pos = [], step * batch_size
        while len(out) < batch_size:
            epoch, offset = divmod(pos, len(self))
            take = min(batch_size - len(out), len(self) - offset)
            out.extend(self._permutation(seed, epoch)[offset : offset + take])
            pos += take
        return np.asarray(out)

    def batch(self, step: int, batch_size: int, seed: int):
        """Batch `step` as a `train.Batch` of numpy arrays (texts padded to the longest)."""
        from audiogen_jax.train import Batch

        idx = self.indices(step, batch_size, seed)
        texts = [self.texts[self.text_of_N[i]] for i in idx]
        L, C = max(len(t) for t in texts), texts[0].shape[1]
        text_BLC = np.zeros((batch_size, L, C), np.float32)
        mask_BL = np.zeros((batch_size, L), np.int32)
        for b, t in enumerate(texts):
            text_BLC[b, : len(t)] = t
            mask_BL[b, : len(t)] = 1
        return Batch(self.codes_NKT[idx], text_BLC, mask_BL)
