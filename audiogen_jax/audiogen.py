"""The `AudioGen` / `MusicGen` API: text (and optionally an audio prompt) to audio or music.

    model = AudioGen.from_pretrained("facebook/audiogen-medium")  # or a converted dir, tiny-random
    model.set_generation_params(duration=5.0)
    wav = model.generate(["dog barking", "sirens"], seed=0)  # [B, C, W] float32

    model = MusicGen.from_pretrained("facebook/musicgen-stereo-small")  # the same class underneath
    wav = model.generate(["lo-fi piano"], seed=0)  # [1, 2, W]: 15 s of stereo at 32 kHz

`from_pretrained` accepts
  - a converted directory (`convert_weights.py ... --out DIR`);
  - `"toy"`: the small model trained from scratch on a world of synthetic sounds that ships inside
    the package (`toy/`: beeps, chirps, noises and clicks, 8 kHz, 1.5 s; no network);
  - `"tiny-random"`: a small random-weight model built offline (see `presets.py`; it makes noise);
  - a hub id such as `facebook/audiogen-medium` or `facebook/musicgen-small` (`presets.CHECKPOINTS`
    lists the released ones): downloads `state_dict.bin` and `compression_state_dict.bin` with
    huggingface_hub (and, when the latter only names a pretrained codec, that codec's config.json
    and weights, e.g. `facebook/encodec_32khz`), plus the T5 encoder its config names (`t5-large`
    for AudioGen, `t5-base` for MusicGen: config.json, model.safetensors, spiece.model and
    tokenizer files), converts them once (`encodec_params.py`, `lm_params.py`, `t5_params.py`),
    and caches the converted
    directory under `$AUDIOGEN_JAX_CACHE/<name>` (default `~/.cache/audiogen_jax/<name>`). Later
    calls load the cache without touching the network; an entry of an older format version, or
    one that does not match its manifest, is converted again. Files already in the Hugging Face
    cache are used without the network; when the hub cannot be reached, the error comes at once
    (`hub.py`), with the download size and what to do offline.

Every directory is checked against its manifest before loading (`checkpoint.check_directory`:
sizes always, sha256 at the first load of files not hashed on this machine) and every weight is
checked to be finite.

Loading also turns on JAX's persistent compilation cache (`compilation_cache.py`; under the same
root, `<root>/xla`), so a later process loads the compiled generation program instead of compiling
it; `compilation_cache=False` leaves JAX's settings alone.

One class for the family. In the reference, `AudioGen` and `MusicGen` are thin subclasses of
`BaseGenModel` that differ only in their default model and generation defaults (AudioGen: 5 s,
extend stride 2 s; MusicGen: 15 s, 18 s). Here those defaults are stored with each converted
checkpoint (`LMConfig.family`, `duration`, `extend_stride`, from its training config's `solver`), so
`AudioGen.from_pretrained("facebook/musicgen-small")` behaves as the reference's `MusicGen`, and
`MusicGen` is the same class with MusicGen's default model, for code written against the reference.
Stereo checkpoints wrap the codec in `stereo.InterleaveStereoCompressionModel` (their LM's config
says so) and return `[B, 2, W]`.

References: audiocraft 1.3.0 `models/audiogen.py` (`AudioGen`), `models/musicgen.py` (`MusicGen`),
`models/genmodel.py` (`BaseGenModel`: `set_generation_params`, `generate`,
`generate_unconditional`, `generate_continuation`), `models/loaders.py`.

Differences from the reference:
- Every call takes a `seed`, any integer in [-2**63, 2**64) (negative seeds count modulo 2**64, as
  `torch.manual_seed` takes them); all 64 bits make the JAX key, so the same seed gives the same
  audio and different seeds different keys. Without one, a fresh 64-bit seed is drawn from the OS.
- Bad settings or inputs raise `ValueError` with the reason, before any work (the reference asserts
  late).
- `temperature <= 0` while sampling is an error (the reference silently turns greedy); ask for
  `use_sampling=False` instead.
- Frame counts are bucketed to whole seconds (`frame_bucket`) so a new duration rarely recompiles;
  the tokens are the same as with exact shapes (see `generate.py`).
- `two_step_cfg` and `set_custom_progress_callback` are not provided; `progress=True` shows a tqdm
  bar.
- `set_generation_params` without a duration (or stride) keeps the model's default, 5 s for
  AudioGen and 15 s for MusicGen; the reference resets it to its argument default (10 s / 30 s).
- MusicGen-melody (`generate_with_chroma`) is not implemented; loading a melody checkpoint says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import (
    atomic,
    audio,
    checkpoint,
    checks,
    encodec_params,
    hub,
    lm_params,
    presets,
    sampling,
    sharding,
    stereo,
    t5,
    t5_params,
    toy,
)
from audiogen_jax import compilation_cache as compile_cache
from audiogen_jax import generate as gen
from audiogen_jax.config import EncodecConfig, LMConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.io.errors import DownloadError
from audiogen_jax.lm import LMModel

DEFAULT_MODEL = hub.DEFAULT_MODEL
LM_FILE = hub.LM_FILE
COMPRESSION_FILE = hub.COMPRESSION_FILE
cache_root = hub.cache_root
_cache_dir = hub.converted_dir
_looks_like_hub_id = hub.looks_like_hub_id
_how_to_get = hub.how_to_get
_offline_help = hub.offline_help


def compilation_cache_dir(root: str | None = None) -> str | None:
    """The default persistent compilation cache: $AUDIOGEN_JAX_COMPILATION_CACHE, else
    <root or cache_root()>/xla; None when the variable turns it off."""
    return compile_cache.default_directory(root or cache_root())


def _download(name: str, filename: str) -> str:
    try:
        path = hub.download(name, filename)
    except hub.HubUnreachable as e:
        raise checkpoint.CheckpointError(
            f"could not download {name!r} ({filename}): {e} (offline?). {_offline_help(name)}"
        ) from e
    except Exception as e:  # noqa: BLE001 - unknown repository, HTTP errors: one clear message
        raise checkpoint.CheckpointError(
            f"could not download {name!r} ({filename}) from the Hugging Face hub "
            f"({type(e).__name__}: {e}). "
            f"If you are offline or the id is wrong, this is why. {_offline_help(name)}"
        ) from e
    if path is None:
        raise checkpoint.CheckpointError(
            f"{name!r} on the Hugging Face hub has no {filename}: not an audiocraft AudioGen or "
            "MusicGen release"
        )
    return path


def download_and_convert(name: str, cache_root_dir: str | None = None) -> str:
    """The converted directory of hub model `name`: cached, else downloaded, converted and cached.

    The conversion is built beside the cache entry and swapped in whole with its manifest, so an
    interrupted run never leaves an entry that loads; two processes converting the same entry
    take turns (the second finds the first's result).

    Raises:
      checkpoint.CheckpointError: offline, unknown repository, or a corrupt download (with what to
      do).
    """
    final = _cache_dir(name, cache_root_dir)
    # An entry of an older format version, or torn, is converted again.
    if checkpoint.is_complete(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with atomic.locked(final, wait=True):
        if checkpoint.is_complete(final):  # another process converted it while we waited
            return final
        lm_file = _download(name, LM_FILE)
        compression_file = _download(name, COMPRESSION_FILE)
        with checkpoint.writing(final, lock=False) as tmp:  # the lock is held already
            try:
                encodec_params.convert_compression(compression_file, tmp)
                lm_params.convert_lm(lm_file, tmp)
            except DownloadError as e:  # the codec the compression file names (MusicGen-stereo)
                raise checkpoint.CheckpointError(f"{name}: {e}") from e
            except (OSError, ValueError) as e:
                raise checkpoint.CheckpointError(
                    f"the checkpoint downloaded for {name!r} could not be converted: {e}\n"
                    "A corrupt download is the usual cause: remove it from the Hugging Face cache "
                    f"(`hf cache delete`, or delete {os.path.dirname(lm_file)}) and try again. "
                    f"{_how_to_get(name)}"
                ) from e
            t5_name = checkpoint.read_config(tmp, "conditioner")["name"]
            try:
                t5_params.convert_t5(t5_name, tmp)
            except (OSError, ValueError) as e:
                raise checkpoint.CheckpointError(
                    f"could not get or convert the text encoder {t5_name!r} for {name!r}: {e}\n"
                    f"{_how_to_get(name)}"
                ) from e
    return final


def resolve(name_or_dir: str | os.PathLike, cache_root_dir: str | None = None) -> str:
    """The converted directory of a directory, "toy", "tiny-random", or a hub id (downloaded if
    needed)."""
    name = os.fspath(name_or_dir)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise checkpoint.CheckpointError(
            f"{name} is a file; give a converted directory (see `audiogen-jax convert --help`), "
            f"a hub id such as {DEFAULT_MODEL!r}, {hub.TOY!r} or {presets.TINY_RANDOM!r}"
        )
    if name in hub.UNSUPPORTED:
        raise checkpoint.CheckpointError(hub.unsupported_message(name))
    if name == hub.TOY:
        return toy.WEIGHTS
    if name == presets.TINY_RANDOM:
        final = _cache_dir(name, cache_root_dir)
        if not checkpoint.is_complete(final):
            presets.build_tiny_random(final)
        return final
    if _looks_like_hub_id(name):
        return download_and_convert(name, cache_root_dir)
    raise checkpoint.CheckpointError(
        f"{name!r} is neither a converted directory, a hub id (owner/name), {hub.TOY!r} nor "
        f"{presets.TINY_RANDOM!r}. "
        f"{_how_to_get(DEFAULT_MODEL)}"
    )


def seed_key(seed: int) -> jax.Array:
    """The JAX key of a seed in [-2**63, 2**64), all 64 bits of it (negative seeds modulo 2**64).

    The key's two 32-bit words are the seed's high and low halves, which is what
    `jax.random.key(seed)` gives for seeds below 2**32 (so those keep their keys).
    """
    s = checks.seed("seed", seed)
    return jax.random.wrap_key_data(jnp.array([s >> 32, s & 0xFFFFFFFF], jnp.uint32))


def _check_descriptions(descriptions: Any, allow_none: bool) -> list[str | None]:
    if isinstance(descriptions, (str, bytes)):
        raise ValueError(
            f"descriptions must be a list of strings, got a single string {descriptions!r}; "
            "wrap it in a list"
        )
    if not isinstance(descriptions, Sequence):
        raise ValueError(
            f"descriptions must be a list of strings, got {type(descriptions).__name__}"
        )
    if len(descriptions) == 0:
        raise ValueError("descriptions is empty: give at least one description")
    for i, d in enumerate(descriptions):
        if d is None and allow_none:
            continue
        if not isinstance(d, str):
            raise ValueError(f"description {i} is a {type(d).__name__} ({d!r}), not a string")
    return list(descriptions)


def generation_settings(
    lm_config: LMConfig,
    frame_rate: float,
    *,
    duration: float | None = None,
    max_duration: float | None = None,
    extend_stride: float | None = None,
    **sampling_overrides: Any,
) -> gen.GenerationSettings:
    """The `GenerationSettings` of `AudioGen.set_generation_params` for a model's configs (the
    command line checks its options with it before loading the model).

    Args:
      lm_config: the LM's config (codebook size, generation defaults, window).
      frame_rate: the codec's frames per second.
      duration, extend_stride: as `set_generation_params`; None: the checkpoint's defaults (its
        family's: AudioGen 5 s and 2 s, MusicGen 15 s and 18 s).
      max_duration: seconds per window; default the config's.
      **sampling_overrides: use_sampling, top_k, top_p, temperature, cfg_coef (None: the default).
    """
    duration = lm_config.duration if duration is None else duration
    extend_stride = lm_config.extend_stride if extend_stride is None else extend_stride
    overrides = {k: v for k, v in sampling_overrides.items() if v is not None}
    # A checkpoint's default top_k may exceed a small test codebook; keep at most the whole
    # codebook.
    overrides.setdefault("top_k", min(lm_config.top_k, lm_config.card))
    return gen.GenerationSettings(
        duration=duration,
        frame_rate=frame_rate,
        max_duration=lm_config.max_duration if max_duration is None else max_duration,
        extend_stride=extend_stride,
        sampling=sampling.SamplingParams.from_lm_config(lm_config, **overrides),
        frame_bucket=max(1, round(frame_rate)),
    )


def peek_configs(
    name_or_dir: str | os.PathLike, cache_dir: str | None = None
) -> tuple[EncodecConfig, LMConfig] | None:
    """The codec and LM configs of what `from_pretrained` would load, without loading weights or
    touching the network: None for a hub id not converted yet.

    A directory is checked against its manifest's sizes first (`checkpoint.check_directory`).

    Raises:
      checkpoint.CheckpointError: a directory that is torn, or whose config is unreadable or has
        fields of the wrong type.
    """
    name = os.fspath(name_or_dir)
    if name == presets.TINY_RANDOM and not os.path.isdir(name):
        codec_cfg, _, lm_cfg = presets.tiny_random_configs()
        return codec_cfg, lm_cfg
    if os.path.isdir(name):
        directory = name
    elif name == hub.TOY:
        directory = toy.WEIGHTS
    elif _looks_like_hub_id(name) and checkpoint.is_complete(_cache_dir(name, cache_dir)):
        directory = _cache_dir(name, cache_dir)
    elif _looks_like_hub_id(name):
        return None
    else:
        resolve(name, cache_dir)  # raises the error saying what `name` is not
        return None
    checkpoint.check_directory(directory, hashes=False)
    try:
        return (
            EncodecConfig.from_dict(checkpoint.read_config(directory, "compression")),
            LMConfig.from_dict(checkpoint.read_config(directory, "lm")),
        )
    except checkpoint.CheckpointError:
        raise
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{directory}/{checkpoint.CONFIG_FILE}: {e}") from e


class AudioGen:
    """Text-to-audio (or music) generation with a converted AudioGen or MusicGen checkpoint.

    Attributes:
      name: what the model was loaded from.
      compression_model: the `EncodecModel` (stereo: wrapped in an
        `InterleaveStereoCompressionModel`).
      lm: the `LMModel`.
      conditioner: the `T5Conditioner` (T5 encoder + output_proj).
      tokenizer: the T5 tokenizer.
    """

    def __init__(self, name: str, compression_model, lm, conditioner, tokenizer):
        self.name = name
        self.directory: str | None = None  # the converted directory, when loaded from one
        self.placement: sharding.Placement | None = None  # the mesh, when loaded onto one
        self.compression_model = compression_model
        self.lm = lm
        self.conditioner = conditioner
        self.tokenizer = tokenizer
        if (
            compression_model.cardinality != lm.config.card
            or compression_model.n_q != lm.config.n_q
        ):
            raise checkpoint.CheckpointError(
                f"{name}: the codec has {compression_model.n_q} codebooks of "
                f"{compression_model.cardinality} "
                f"but the LM models {lm.config.n_q} of {lm.config.card}"
            )
        if conditioner.output_dim != lm.config.dim:
            raise checkpoint.CheckpointError(
                f"{name}: the conditioner gives width {conditioner.output_dim}, the LM wants "
                f"{lm.config.dim}"
            )
        self._splits = (nnx.split(lm), nnx.split(conditioner))
        # Seconds per generation window (the training segment), from the checkpoint; an attribute,
        # as in the reference, so it can be lowered to exercise the sliding window cheaply.
        self.max_duration = float(lm.config.max_duration)
        self.set_generation_params()

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike = DEFAULT_MODEL,
        *,
        dtype: Any = None,
        cache_dir: str | None = None,
        compilation_cache: bool | str | os.PathLike = True,
        verify: bool | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> AudioGen:
        """Loads a converted directory, `"tiny-random"`, or a hub id (downloaded and converted
        once).

        Args:
          name_or_dir: see the module docstring.
          dtype: LM weight dtype (e.g. `jnp.bfloat16`); None keeps the converted file's dtype.
          cache_dir: root of the conversion cache; default `$AUDIOGEN_JAX_CACHE` or
            `~/.cache/audiogen_jax`.
          compilation_cache: True: turn on JAX's persistent compilation cache in its default
            directory (`$AUDIOGEN_JAX_COMPILATION_CACHE`, else `<cache root>/xla`); a path: there;
            False: leave JAX's settings as they are. A directory JAX already uses is kept.
          verify: check every file's sha256 against the manifest (True), sizes only (False), or
            sizes plus the sha256 of files not yet hashed on this machine (None, the default:
            a copied directory is hashed once; costs in docs/security.md).
          mesh: a device mesh (`sharding.make_mesh`): each device loads only its shards of the
            weights (`sharding.py` says which), and `generate*` split the descriptions over its
            data x fsdp devices. None: the default device.

        Raises:
          checkpoint.CheckpointError: a directory that is missing, torn (does not match its
            manifest), corrupt, or holds non-finite weights; with how to convert it again.
          sharding.ShardingError: a mesh the model cannot be split over (naming the dimension).
        """
        if compilation_cache is True:
            compilation_cache = compilation_cache_dir(cache_dir)
        if compilation_cache:
            compile_cache.enable(compilation_cache)
        directory = resolve(name_or_dir, cache_dir)
        checkpoint.check_directory(directory, hashes=verify)
        placement = None if mesh is None else sharding.Placement(mesh)
        shardings = sharding.loader(placement)
        try:
            codec = EncodecModel.from_pretrained(directory, shardings=shardings)
            lm = LMModel.from_pretrained(directory, dtype=dtype, shardings=shardings)
            conditioner = t5.T5Conditioner.from_pretrained(
                directory, with_tokenizer=False, shardings=shardings
            )
            tokenizer = t5.load_tokenizer(directory)
        except (checkpoint.CheckpointError, sharding.ShardingError):
            raise
        except (ValueError, OSError, KeyError) as e:  # e.g. a truncated file's unreadable header
            raise checkpoint.CheckpointError(
                f"{directory}: the converted model could not be loaded ({type(e).__name__}: {e}); "
                "it looks incomplete or corrupt: convert it again (`audiogen-jax convert ... "
                "--out DIR`)"
            ) from e
        if lm.config.interleave_stereo:
            codec = stereo.InterleaveStereoCompressionModel(codec)
        model = cls(os.fspath(name_or_dir), codec, lm, conditioner, tokenizer)
        model.directory = directory
        model.placement = placement
        return model

    # -- properties ------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.compression_model.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.compression_model.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.compression_model.channels

    # -- settings --------------------------------------------------------------------------------

    def set_generation_params(
        self,
        duration: float | None = None,
        use_sampling: bool | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        extend_stride: float | None = None,
    ) -> None:
        """Sets how `generate*` sample. Unset values take the checkpoint's defaults (AudioGen and
        MusicGen alike: sampling, top_k 250, top_p 0, temperature 1, cfg_coef 3; duration and
        extend_stride 5 s and 2 s for AudioGen, 15 s and 18 s for MusicGen).

        Args:
          duration: seconds of audio to produce (> 0); beyond `max_duration`, a sliding window.
          use_sampling: sample (True) or take the argmax (False).
          top_k: keep the k most probable codes, 0 <= k <= codebook size (0 = off).
          top_p: nucleus mass in [0, 1] (0 = off; when > 0 it replaces top-k).
          temperature: > 0 when sampling.
          cfg_coef: classifier-free guidance coefficient.
          extend_stride: seconds each window moves when generating beyond `max_duration`
            (0 < extend_stride < max_duration).
        """
        # Validated whole before it replaces the settings: nothing is applied unless all is valid.
        self.settings = generation_settings(
            self.lm.config,
            self.frame_rate,
            duration=duration,
            max_duration=self.max_duration,
            extend_stride=extend_stride,
            use_sampling=use_sampling,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            cfg_coef=cfg_coef,
        )

    @property
    def duration(self) -> float:
        """Seconds of audio each `generate*` call returns (the reference's attribute)."""
        return self.settings.duration

    @property
    def extend_stride(self) -> float:
        """Seconds each window moves beyond `max_duration` (the reference's attribute)."""
        return self.settings.extend_stride

    @property
    def params(self) -> sampling.SamplingParams:
        """The sampling settings in use."""
        return self.settings.sampling

    @property
    def generation_params(self) -> dict[str, Any]:
        """The settings in the reference's `generation_params` form, plus duration and stride."""
        p = self.settings.sampling
        return dict(
            use_sampling=p.use_sampling,
            temp=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            cfg_coef=p.cfg_coef,
            duration=self.duration,
            extend_stride=self.extend_stride,
        )

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        descriptions: Sequence[str],
        progress: bool = False,
        seed: int | None = None,
        return_tokens: bool = False,
    ):
        """Audio for each description.

        Args:
          descriptions: B text descriptions.
          progress: show a progress bar over the decoding steps.
          seed: random seed (same seed, same output); None draws one.
          return_tokens: also return the codes.

        Returns:
          wav [B, C, W] float32 numpy at `sample_rate`, C = `audio_channels` (and codes
          [B, K, T] int32 if `return_tokens`).
        """
        descriptions = _check_descriptions(descriptions, allow_none=False)
        return self._generate(descriptions, None, progress, seed, return_tokens)

    def generate_unconditional(
        self,
        num_samples: int,
        progress: bool = False,
        seed: int | None = None,
        return_tokens: bool = False,
    ):
        """Audio with no description (the null condition on both CFG branches)."""
        if checks.integer("num_samples", num_samples) < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        return self._generate([None] * int(num_samples), None, progress, seed, return_tokens)

    def generate_continuation(
        self,
        prompt,
        prompt_sample_rate: int,
        descriptions: Sequence[str | None] | None = None,
        progress: bool = False,
        seed: int | None = None,
        return_tokens: bool = False,
    ):
        """Continues audio prompts; the output starts with the (re-encoded) prompt.

        Args:
          prompt: [C, W] or [B, C, W] float audio; mono or stereo (mixed down to a mono model,
            mono repeated for a stereo one, and resampled when `prompt_sample_rate` differs, as the
            reference's `convert_audio`).
          prompt_sample_rate: the prompt's sample rate in Hz.
          descriptions: B descriptions (or None entries); None means unconditional.
          progress, seed, return_tokens: as `generate`.

        Returns:
          wav [B, C, W] float32 numpy (and codes when `return_tokens`).
        """
        wav = np.asarray(prompt)
        if wav.ndim == 2:
            wav = wav[None]
        if wav.ndim != 3:
            raise ValueError(
                f"prompt must be [C, W] or [B, C, W] audio, got shape {np.shape(prompt)}"
            )
        if not np.issubdtype(wav.dtype, np.floating):
            raise ValueError(f"prompt must be float audio, got dtype {wav.dtype}")
        B, C, W = wav.shape
        # Mono is repeated for a stereo model, stereo mixed down for a mono one.
        if C not in (1, 2):
            hint = " (is it [W, C]? transpose it)" if C > W else ""
            raise ValueError(
                f"prompt has {C} channels{hint}; expected [C, W] with C = 1 or 2 (the model has "
                f"{self.audio_channels})"
            )
        if W == 0 or not np.all(np.isfinite(wav)):
            raise ValueError("prompt must be non-empty and finite")
        rate = checks.finite_number("prompt_sample_rate", prompt_sample_rate)
        if rate <= 0 or rate != int(rate):
            raise ValueError(
                f"prompt_sample_rate must be a positive integer (Hz), got {prompt_sample_rate}"
            )
        if descriptions is None:
            descriptions = [None] * B
        descriptions = _check_descriptions(descriptions, allow_none=True)
        if len(descriptions) != B:
            raise ValueError(f"{len(descriptions)} descriptions for {B} prompts")
        wav = np.asarray(
            audio.convert_audio(
                wav.astype(np.float32), int(rate), self.sample_rate, self.audio_channels
            )
        )
        # Checked before encoding (generate_codes checks it again in frames).
        prompt_seconds = wav.shape[-1] / self.sample_rate
        limit = min(self.duration, self.max_duration)
        if math.ceil(wav.shape[-1] / self.compression_model.hop_length) >= int(
            limit * self.frame_rate
        ):
            raise ValueError(
                f"the prompt ({prompt_seconds:.2f} s) must be shorter than the duration to "
                f"generate ({limit:g} s per window); raise duration with set_generation_params"
            )
        codes = np.asarray(jax.device_get(self.compression_model.encode(wav)))
        return self._generate(descriptions, codes, progress, seed, return_tokens)

    def _generate(self, descriptions, prompt_codes, progress, seed, return_tokens):
        key = seed_key(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
        # The window is read when generating, as the reference reads its `max_duration` attribute.
        settings = dataclasses.replace(self.settings, max_duration=self.max_duration)
        codes, wav = gen.generate(
            self.lm,
            self.conditioner,
            self.tokenizer,
            self.compression_model,
            descriptions,
            settings,
            key=key,
            prompt_BKT=prompt_codes,
            progress=progress,
            splits=self._splits,
            placement=self.placement,
        )
        return (wav, codes) if return_tokens else wav


class MusicGen(AudioGen):
    """`AudioGen` with MusicGen's default model, for code written against the reference's class.

    Nothing else differs: the generation defaults (15 s, extend stride 18 s) come with each
    MusicGen checkpoint, so `AudioGen.from_pretrained("facebook/musicgen-small")` is the same model.
    """

    DEFAULT = "facebook/musicgen-small"

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike = DEFAULT,
        *,
        dtype: Any = None,
        cache_dir: str | None = None,
        compilation_cache: bool | str | os.PathLike = True,
        verify: bool | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> MusicGen:
        """As `AudioGen.from_pretrained`, defaulting to facebook/musicgen-small."""
        return super().from_pretrained(
            name_or_dir,
            dtype=dtype,
            cache_dir=cache_dir,
            compilation_cache=compilation_cache,
            verify=verify,
            mesh=mesh,
        )
