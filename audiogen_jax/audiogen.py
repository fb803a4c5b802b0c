"""The `AudioGen` API: text (and optionally an audio prompt) to audio, like audiocraft's `AudioGen`.

    model = AudioGen.from_pretrained("facebook/audiogen-medium")  # or a converted dir, tiny-random
    model.set_generation_params(duration=5.0)
    wav = model.generate(["dog barking", "sirens"], seed=0)  # [B, 1, W] float32

`from_pretrained` accepts
  - a converted directory (`convert_weights.py ... --out DIR`);
  - `"tiny-random"`: a small random-weight model built offline (see `presets.py`; it makes noise);
  - a hub id such as `facebook/audiogen-medium`: downloads `state_dict.bin` and
    `compression_state_dict.bin` with huggingface_hub, plus the T5 encoder its config names
    (`t5-large`: config.json, model.safetensors, spiece.model and tokenizer files), converts them
    once (`encodec_params.py`, `lm_params.py`, `t5_params.py`), and caches the converted
    directory under `$AUDIOGEN_JAX_CACHE/<name>` (default `~/.cache/audiogen_jax/<name>`). Later
    calls load the cache without touching the network; an entry of an older format version is
    converted again.

References: audiocraft 1.3.0 `models/audiogen.py` (`AudioGen`), `models/genmodel.py`
(`BaseGenModel`: `set_generation_params`, `generate`, `generate_unconditional`,
`generate_continuation`), `models/loaders.py`.

Differences from the reference:
- Every call takes a `seed` (JAX keys); the same seed gives the same audio. Without one, a fresh
  seed is drawn from the OS.
- Bad settings or inputs raise `ValueError` with the reason, before any work (the reference asserts
  late).
- `temperature <= 0` while sampling is an error (the reference silently turns greedy); ask for
  `use_sampling=False` instead.
- Frame counts are bucketed to whole seconds (`frame_bucket`) so a new duration rarely recompiles;
  the tokens are the same as with exact shapes (see `generate.py`).
- `two_step_cfg` and `set_custom_progress_callback` are not provided; `progress=True` shows a tqdm
  bar.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import huggingface_hub
import jax
import numpy as np
from flax import nnx

from audiogen_jax import (
    audio,
    checkpoint,
    checks,
    encodec_params,
    lm_params,
    presets,
    sampling,
    sharding,
    t5,
    t5_params,
)
from audiogen_jax import generate as gen
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.lm import LMModel

DEFAULT_MODEL = "facebook/audiogen-medium"
LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
# Written last into a cache entry: its presence means the conversion finished.
_COMPLETE = ".complete"


def cache_root() -> str:
    """Where converted models are cached: $AUDIOGEN_JAX_CACHE, else ~/.cache/audiogen_jax."""
    return os.environ.get("AUDIOGEN_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "audiogen_jax"
    )


def _cache_dir(name: str, root: str | None) -> str:
    return os.path.join(root or cache_root(), name.replace("/", "--"))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and " " not in name


def _how_to_get(name: str) -> str:
    return (
        f"To get it offline: download {LM_FILE} and {COMPRESSION_FILE} from "
        f"https://huggingface.co/{name} and the T5 files (config.json, model.safetensors, "
        "spiece.model) "
        "from https://huggingface.co/google-t5/t5-large, convert them with `audiogen-jax convert "
        "--compression compression_state_dict.bin --lm state_dict.bin --t5 T5_DIR --out DIR` and "
        "pass DIR."
    )


def download_and_convert(name: str, cache_root_dir: str | None = None) -> str:
    """The converted directory of hub model `name`: cached, else downloaded, converted and cached.

    The conversion is written to a temporary directory and renamed into place only when complete, so
    an interrupted run never leaves a cache entry that looks valid.

    Raises:
      checkpoint.CheckpointError: offline, unknown repository, or a corrupt download (with what to
      do).
    """
    final = _cache_dir(name, cache_root_dir)
    # An entry of an older format version is converted again.
    if os.path.isfile(os.path.join(final, _COMPLETE)) and checkpoint.is_current(final):
        return final
    try:
        lm_file = huggingface_hub.hf_hub_download(repo_id=name, filename=LM_FILE)
        compression_file = huggingface_hub.hf_hub_download(repo_id=name, filename=COMPRESSION_FILE)
    except Exception as e:
        raise checkpoint.CheckpointError(
            f"could not download {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"If you are offline or the id is wrong, this is why. {_how_to_get(name)}"
        ) from e
    tmp = f"{final}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            encodec_params.convert_compression(compression_file, tmp)
            lm_params.convert_lm(lm_file, tmp)
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
        with open(os.path.join(tmp, _COMPLETE), "w") as f:
            f.write(f"converted from {name}\n")
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve(name_or_dir: str | os.PathLike, cache_root_dir: str | None = None) -> str:
    """The converted directory of a directory, "tiny-random", or a hub id (downloaded if needed)."""
    name = os.fspath(name_or_dir)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise checkpoint.CheckpointError(
            f"{name} is a file; give a converted directory (see `audiogen-jax convert --help`), "
            f"a hub id such as {DEFAULT_MODEL!r}, or {presets.TINY_RANDOM!r}"
        )
    if name == presets.TINY_RANDOM:
        final = _cache_dir(name, cache_root_dir)
        if not checkpoint.is_current(final):
            presets.build_tiny_random(final)
        return final
    if _looks_like_hub_id(name):
        return download_and_convert(name, cache_root_dir)
    raise checkpoint.CheckpointError(
        f"{name!r} is neither a converted directory, a hub id (owner/name) nor "
        f"{presets.TINY_RANDOM!r}. "
        f"{_how_to_get(DEFAULT_MODEL)}"
    )


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


class AudioGen:
    """Text-to-audio generation with a converted AudioGen checkpoint.

    Attributes:
      name: what the model was loaded from.
      compression_model: the `EncodecModel`.
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
        self.set_generation_params(duration=5.0)

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike = DEFAULT_MODEL,
        *,
        dtype: Any = None,
        cache_dir: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> AudioGen:
        """Loads a converted directory, `"tiny-random"`, or a hub id (downloaded and converted
        once).

        Args:
          name_or_dir: see the module docstring.
          dtype: LM weight dtype (e.g. `jnp.bfloat16`); None keeps the converted file's dtype.
          cache_dir: root of the conversion cache; default `$AUDIOGEN_JAX_CACHE` or
            `~/.cache/audiogen_jax`.
          mesh: a device mesh (`sharding.make_mesh`): each device loads only its shards of the
            weights (`sharding.py` says which), and `generate*` split the descriptions over its
            data x fsdp devices. None: the default device.
        """
        directory = resolve(name_or_dir, cache_dir)
        placement = None if mesh is None else sharding.Placement(mesh)
        shardings = sharding.loader(placement)
        try:
            codec = EncodecModel.from_pretrained(directory, shardings=shardings)
            lm = LMModel.from_pretrained(directory, dtype=dtype, shardings=shardings)
            if placement is not None:
                sharding.place_module(lm, placement)  # int8 kernels, quantized from the shards
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
        duration: float = 5.0,
        use_sampling: bool | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        extend_stride: float = 2.0,
    ) -> None:
        """Sets how `generate*` sample. Unset sampling values take the checkpoint's defaults
        (AudioGen: sampling, top_k 250, top_p 0, temperature 1, cfg_coef 3).

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
        cfg = self.lm.config
        overrides = dict(
            use_sampling=use_sampling,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            cfg_coef=cfg_coef,
        )
        overrides = {name: value for name, value in overrides.items() if value is not None}
        # A checkpoint's default top_k may exceed a small test codebook; keep at most the whole
        # codebook.
        overrides.setdefault("top_k", min(cfg.top_k, cfg.card))
        # Both constructors validate (nothing is applied unless all of it is valid).
        self.settings = gen.GenerationSettings(
            duration=duration,
            frame_rate=self.frame_rate,
            max_duration=self.max_duration,
            extend_stride=extend_stride,
            sampling=sampling.SamplingParams.from_lm_config(cfg, **overrides),
            frame_bucket=max(1, round(self.frame_rate)),
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
          wav [B, 1, W] float32 numpy at `sample_rate` (and codes [B, K, T] int32 if
          `return_tokens`).
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
          prompt: [C, W] or [B, C, W] float audio; mono or stereo (mixed down to the model's
            channels, and resampled when `prompt_sample_rate` differs, as the reference's
            `convert_audio`).
          prompt_sample_rate: the prompt's sample rate in Hz.
          descriptions: B descriptions (or None entries); None means unconditional.
          progress, seed, return_tokens: as `generate`.

        Returns:
          wav [B, 1, W] float32 numpy (and codes when `return_tokens`).
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
        if C not in (1, 2) or (C != self.audio_channels and self.audio_channels != 1):
            hint = " (is it [W, C]? transpose it)" if C > W else ""
            raise ValueError(
                f"prompt has {C} channels{hint}; expected [C, W] with C = {self.audio_channels} "
                "(or stereo, which is mixed down)"
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
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        key = jax.random.key(checks.integer("seed", seed))
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
