"""Command line: `audiogen-jax generate ...`, `convert ...`, `train ...`, `toy ...`.

    audiogen-jax generate "dog barking" "sirens of an emergency vehicle" --duration 5 --seed 0
    audiogen-jax generate "a rising chirp" --model toy --out-dir out/   # offline, the toy model
    audiogen-jax generate "rain" --model tiny-random --duration 1 --out-dir out/   # offline, noise
    audiogen-jax generate "footsteps" --continue prompt.wav --duration 6 --out-dir out/
    audiogen-jax generate "lo-fi piano" --model facebook/musicgen-small --out-dir out/  # music
    audiogen-jax generate --prompts-file prompts.txt --mesh data=8 --out-dir out/  # one per line
    audiogen-jax convert --compression compression_state_dict.bin --lm state_dict.bin \\
        --t5 t5-large --out DIR

Manners:
- Every failure is one line, `error: ...`, naming the problem (exit status 2 for bad arguments, 1
  for everything else, 130 when interrupted); `--debug` shows the traceback instead.
- `generate` checks every argument before loading the model: the options, the prompt file, the
  settings against the model's config (read from its directory without loading the weights) and
  the output names. It never replaces an existing file unless `--overwrite` is given, and writes
  all its files or none: each is written under a temporary name beside its destination and they are
  moved into place together at the end (`atomic.commit_files`). Durations beyond
  `MAX_DURATION` need `--allow-long`.
- `generate --prompts-file` makes one clip per line in batches of `--batch-size` under one progress
  bar, each batch's files moved into place when the batch is done; a batch whose files all exist
  is skipped (without `--overwrite`, existing files are kept), so an interrupted run continues
  where it stopped. `--mesh` spreads the weights and the batch over devices (`sharding.py`), and
  `--distributed` makes this process one of several that run the same command (process 0 writes).
- `convert` builds the converted directory beside `--out` and swaps it in whole, its manifest
  written last; a second converter on the same `--out` is refused while the first runs
  (`checkpoint.writing`).

Files are written as the reference's documented usage does: loudness-normalised to -14 LUFS with
the tanh compressor (`--strategy loudness`), 16-bit WAV, or 24-bit FLAC with `--format flac`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import audiogen_jax
from audiogen_jax import hub  # a light import: --help and the offline check load no JAX
from audiogen_jax.hub import DEFAULT_MODEL

STRATEGIES = ("loudness", "peak", "rms", "clip")
FORMATS = ("wav", "flac")
# Longer requests need --allow-long: a slip such as --duration 1e9 would otherwise start a job of
# years. AudioGen makes 10 s windows; 10 minutes is ~300 of them.
MAX_DURATION = 600.0
DEBUG_HELP = "on an error, show the traceback instead of one line"


class UsageError(ValueError):
    """A bad argument, found before any work (exit status 2)."""


# --------------------------------------------------------------------------------------------------
# convert


CONVERT_EXAMPLES = """\
examples:
  # the released AudioGen checkpoint (from https://huggingface.co/facebook/audiogen-medium) and its
  # text encoder (a hub id, or a directory with config.json, model.safetensors, spiece.model)
  audiogen-jax convert --compression compression_state_dict.bin --lm state_dict.bin \\
      --t5 t5-large --out audiogen-medium
  # the LM in bfloat16 (half the disk and memory), into an existing directory
  audiogen-jax convert --lm state_dict.bin --dtype bfloat16 --out audiogen-medium

The directory is built beside --out and replaces it in one step when complete, with a manifest
(sizes and sha256) that loading checks; the components not given are kept from the existing --out.
"""


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audiogen-jax convert",
        description="Convert the released PyTorch checkpoints into an audiogen-jax directory "
        "(no torch needed).",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--compression",
        help="audiocraft compression_state_dict.bin (EnCodec), or a transformers EnCodec directory",
    )
    p.add_argument("--lm", help="audiocraft state_dict.bin (the transformer LM)")
    p.add_argument(
        "--t5", help="Hugging Face T5 checkpoint: a directory or a hub id such as t5-large"
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="LM weight dtype"
    )
    p.add_argument("--out", required=True, help="converted directory to create or update")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def _check_convert_args(args: argparse.Namespace) -> None:
    if not (args.compression or args.lm or args.t5):
        raise UsageError("nothing to convert: give --compression, --lm and/or --t5")
    if not args.out:
        raise UsageError("--out is empty: give the directory to create or update")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} exists and is not a directory")
    for flag in ("compression", "lm"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{flag} {path}: no such file")


def convert_main(argv: list[str] | None = None) -> int:
    """`audiogen-jax convert` (and `convert_weights.py`): the exit status; failures are one line."""
    return _run(_convert, argv)


def _convert(argv: list[str]) -> int:
    args = _convert_parser().parse_args(argv)
    try:
        _check_convert_args(args)
    except UsageError as e:
        return _fail(e, 2)
    # Imported after the arguments are checked: they pull in JAX.
    from audiogen_jax import checkpoint
    from audiogen_jax.encodec_params import convert_compression
    from audiogen_jax.lm_params import convert_lm
    from audiogen_jax.t5_params import convert_t5

    done = []
    with checkpoint.writing(args.out, keep_existing=True) as tmp:
        if args.compression:
            convert_compression(args.compression, tmp)
            done.append("EnCodec")
        if args.t5:
            convert_t5(args.t5, tmp)
            done.append("T5")
        if args.lm:
            convert_lm(args.lm, tmp, dtype=args.dtype)
            done.append(f"LM ({args.dtype})")
    for what in done:
        print(f"{what} -> {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------
# generate


GENERATE_EXAMPLES = """\
examples:
  # the released model (downloaded and converted once, 6.86 GB), files in the current directory
  audiogen-jax generate "dog barking" "sirens of an emergency vehicle" --duration 5 --seed 0
  # music: MusicGen (15 s by default; -stereo-small etc. write stereo files)
  audiogen-jax generate "lo-fi piano" --model facebook/musicgen-small
  # offline: the small model that ships with the package (beeps, chirps, noises, clicks)
  audiogen-jax generate "a low beep then a rising chirp" --model toy --out-dir out/
  # offline: the small random-weight model (it makes noise), to try the pipeline
  audiogen-jax generate "rain" --model tiny-random --duration 1 --out-dir out/
  # continue a recording, greedy, as 24-bit FLAC, from a converted directory
  audiogen-jax generate "footsteps" --continue prompt.wav --duration 6 --greedy \\
      --format flac --model audiogen-medium/
  # one clip per line of a file, in batches spread over 8 devices
  audiogen-jax generate --prompts-file prompts.txt --mesh data=8 --seed 0 --out-dir out/

Outputs are named NN_<description>.<format> in --out-dir (default: the current directory). An
existing file is never replaced unless --overwrite is given; a run writes all its files or none.
"""


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audiogen-jax generate",
        description="Text (and optionally an audio prompt) to audio (AudioGen) or music "
        "(MusicGen).",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("descriptions", nargs="*", help="one text description per output file")
    p.add_argument(
        "--prompts-file",
        default=None,
        metavar="FILE",
        help="a text file of descriptions, one clip per line (blank lines skipped)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="clips per batch with --prompts-file (default 8, or a multiple of the mesh's "
        "data x fsdp devices)",
    )
    p.add_argument(
        "--mesh",
        default=None,
        metavar="AXIS=N,...",
        help="device mesh, e.g. data=2,tensor=4 (axes data, fsdp, tensor; -1: the rest); "
        "default: one device",
    )
    p.add_argument(
        "--distributed",
        nargs="?",
        const="auto",
        default=None,
        metavar="HOST:PORT,N,I",
        help="run as one of N processes (every host runs the same command; process 0 writes the "
        "files); alone, JAX finds the cluster (Cloud TPU slice, SLURM)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id (default {DEFAULT_MODEL}; released: {', '.join(hub.TEXT_ENCODERS)}), "
        "a converted directory, 'toy' (ships with the package) or 'tiny-random'",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of audio (default: the model's, 5 for AudioGen, 15 for MusicGen)",
    )
    p.add_argument(
        "--allow-long",
        action="store_true",
        help=f"allow --duration beyond {MAX_DURATION:g} s",
    )
    p.add_argument(
        "--out-dir", default=".", help="directory for the audio files (default: current)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed, an integer in [-2**63, 2**64) (default: a fresh one)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="top-k sampling (default: the model's, 250)"
    )
    p.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling mass in [0, 1] (0 = off)"
    )
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0)")
    p.add_argument(
        "--cfg-coef", type=float, default=None, help="classifier-free guidance (default 3)"
    )
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument(
        "--extend-stride",
        type=float,
        default=None,
        help="seconds each window moves beyond the model's max duration (default: the model's, "
        "2 for AudioGen, 18 for MusicGen)",
    )
    p.add_argument(
        "--continue",
        dest="prompt",
        default=None,
        metavar="PROMPT.wav",
        help="continue this audio file (resampled and mixed down as needed)",
    )
    p.add_argument("--format", default="wav", choices=FORMATS, help="output format (default wav)")
    p.add_argument(
        "--strategy",
        default="loudness",
        choices=STRATEGIES,
        help="normalisation (default loudness: -14 LUFS with the tanh compressor)",
    )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="LM weight dtype")
    p.add_argument(
        "--cache-dir", default=None, help="conversion cache (default $AUDIOGEN_JAX_CACHE)"
    )
    p.add_argument(
        "--compilation-cache",
        default=None,
        metavar="DIR",
        help="keep compiled programs here, so the next run does not compile them again (default "
        "$AUDIOGEN_JAX_COMPILATION_CACHE, else xla/ under the conversion cache)",
    )
    p.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="compile everything afresh and keep nothing (as AUDIOGEN_JAX_COMPILATION_CACHE=off)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def _compilation_cache(args: argparse.Namespace) -> bool | str:
    """`AudioGen.from_pretrained`'s `compilation_cache`: off, a directory, or the default."""
    if args.no_compilation_cache:
        return False
    return args.compilation_cache or True


def _sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given, as keywords of `SamplingParams` / `set_generation_params`."""
    given = dict(
        use_sampling=not args.greedy,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=None if args.greedy else args.temperature,
        cfg_coef=args.cfg_coef,
    )
    return {name: value for name, value in given.items() if value is not None}


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:n] or "audio"


def _output_paths(args: argparse.Namespace) -> list[str]:
    """Where each output goes: NN_<slug of its description>.<format> in --out-dir (NN as wide as
    the largest index needs, at least two digits)."""
    conds = args.descriptions or [None]
    names = [_slug(d) if d else "continuation" for d in conds]
    width = max(2, len(str(len(conds) - 1)))
    return [
        os.path.join(args.out_dir, f"{i:0{width}d}_{name}.{args.format}")
        for i, name in enumerate(names)
    ]


def _read_prompts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts-file {path}: cannot be read ({e})") from e
    prompts = [line for line in lines if line]
    if not prompts:
        raise UsageError(f"--prompts-file {path}: no descriptions (every line is blank)")
    return prompts


def _check_out_dir(out_dir: str) -> None:
    """The output directory exists and is writable, or can be created (it is not created here)."""
    if not out_dir:
        raise UsageError("--out-dir is empty: give a directory (the default is the current one)")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UsageError(f"--out-dir {out_dir} exists and is not a directory")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise UsageError(f"--out-dir {out_dir} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out-dir {out_dir} cannot be created: {parent} is not a writable directory"
        )


def _read_prompt(path: str):
    import soundfile

    try:
        wav_WC, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors vary by format: one line
        raise UsageError(f"--continue {path}: not a readable audio file ({e})") from e
    if wav_WC.shape[0] == 0:
        raise UsageError(f"--continue {path}: the file holds no samples")
    if wav_WC.shape[1] > 2:
        raise UsageError(f"--continue {path}: {wav_WC.shape[1]} channels; give mono or stereo")
    return wav_WC.T, rate


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs neither the model nor reading an audio file; raises UsageError."""
    from audiogen_jax import checks, sampling, sharding

    if args.prompts_file is not None:
        if args.descriptions or args.prompt is not None:
            raise UsageError("--prompts-file takes no other descriptions and no --continue")
        args.descriptions = _read_prompts(args.prompts_file)
        if args.batch_size is not None and args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    elif args.batch_size is not None:
        raise UsageError("--batch-size applies to --prompts-file")
    if args.mesh is not None:
        try:
            args.mesh_sizes = sharding.parse_mesh(args.mesh)
        except sharding.ShardingError as e:
            raise UsageError(str(e)) from e
    if args.distributed is not None:
        if args.seed is None:
            raise UsageError("--distributed needs --seed: every process must draw the same numbers")
        try:
            sharding.parse_distributed(args.distributed)
        except sharding.ShardingError as e:
            raise UsageError(str(e)) from e
    if not args.descriptions and args.prompt is None:
        raise UsageError("give at least one description (or --continue PROMPT.wav)")
    for i, d in enumerate(args.descriptions):
        if not d.strip():
            raise UsageError(f"description {i + 1} is empty")
    if args.duration is None:
        pass  # the model's default
    elif not math.isfinite(args.duration) or args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration}")
    elif args.duration > MAX_DURATION and not args.allow_long:
        raise UsageError(
            f"--duration {args.duration:g} s is beyond {MAX_DURATION:g} s; generation time grows "
            "with it (one window of the model per few seconds): give --allow-long if you mean it"
        )
    if args.extend_stride is not None and (
        not math.isfinite(args.extend_stride) or args.extend_stride <= 0
    ):
        raise UsageError(
            f"--extend-stride must be a positive number of seconds, got {args.extend_stride}"
        )
    try:
        if args.seed is not None:
            checks.seed("--seed", args.seed)
        # SamplingParams is where sampling settings are validated; the model's own limits (its
        # codebook size, its window) are checked by `_check_against_model`.
        sampling.SamplingParams(**_sampling_settings(args))
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.compilation_cache and args.no_compilation_cache:
        raise UsageError("give --compilation-cache DIR or --no-compilation-cache, not both")
    if args.compilation_cache and os.path.exists(args.compilation_cache):
        if not os.path.isdir(args.compilation_cache):
            raise UsageError(f"--compilation-cache {args.compilation_cache} is not a directory")
    if args.prompt is not None and not os.path.isfile(args.prompt):
        raise UsageError(f"--continue {args.prompt}: no such file")
    _check_out_dir(args.out_dir)
    # --prompts-file keeps existing files and skips their batches: that is how a run resumes.
    if not args.overwrite and args.prompts_file is None:
        existing = [p for p in _output_paths(args) if os.path.lexists(p)]
        if existing:
            raise UsageError(
                f"{existing[0]} already exists"
                + (f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else "")
                + ": give --overwrite to replace, or another --out-dir"
            )
    for p in _output_paths(args):
        if os.path.isdir(p):
            raise UsageError(f"{p} exists and is a directory")


def _check_against_model(args: argparse.Namespace, prompt) -> None:
    """The settings against the model's configs, read without loading it (when they can be: a
    hub id not yet converted is checked once loaded)."""
    from audiogen_jax import audiogen

    configs = audiogen.peek_configs(args.model, args.cache_dir)
    if configs is None:
        return
    codec_cfg, lm_cfg = configs
    try:
        settings = audiogen.generation_settings(
            lm_cfg,
            codec_cfg.frame_rate,
            duration=args.duration,
            extend_stride=args.extend_stride,
            **_sampling_settings(args),
        )
    except ValueError as e:
        raise UsageError(str(e).replace("extend_stride", "--extend-stride")) from e
    if prompt is not None:
        wav, rate = prompt
        seconds = wav.shape[-1] / rate
        limit = min(settings.duration, settings.max_duration)
        if seconds >= limit:
            raise UsageError(
                f"--continue {args.prompt}: the prompt ({seconds:.2f} s) must be shorter than the "
                f"duration to generate ({limit:g} s per window); raise --duration"
            )


def generate_main(argv: list[str] | None = None) -> int:
    """`audiogen-jax generate`: the exit status; failures are one line."""
    return _run(_generate, argv)


def _generate(argv: list[str]) -> int:
    args = _generate_parser().parse_args(argv)
    if hub.looks_like_hub_id(args.model) and not os.path.exists(args.model):
        # Before JAX is even imported: offline, say so in well under two seconds.
        problem = hub.offline_problem(args.model, args.cache_dir)
        if problem is not None:
            return _fail(RuntimeError(problem), 1)
    from audiogen_jax.checkpoint import CheckpointError
    from audiogen_jax.sharding import ShardingError

    try:
        _check_args(args)
        prompt = _read_prompt(args.prompt) if args.prompt is not None else None
        mesh = _make_mesh(args)
        batch_size = _batch_size(args, mesh)
        _check_against_model(args, prompt)
    except UsageError as e:
        return _fail(e, 2)
    except CheckpointError as e:
        return _fail(e, 1)

    import numpy as np

    from audiogen_jax import presets
    from audiogen_jax.audiogen import AudioGen

    if args.model == presets.TINY_RANDOM:
        print(presets.NOISE_WARNING, file=sys.stderr)
    try:
        model = AudioGen.from_pretrained(
            args.model,
            dtype=args.dtype,
            cache_dir=args.cache_dir,
            compilation_cache=_compilation_cache(args),
            mesh=mesh,
        )
    except ShardingError as e:  # checked on the model's shapes before its weights are read
        return _fail(UsageError(f"--mesh {args.mesh}: {e}"), 2)
    model.set_generation_params(
        duration=args.duration, extend_stride=args.extend_stride, **_sampling_settings(args)
    )
    paths = _output_paths(args)
    if args.prompts_file is not None:
        written = _generate_file(model, list(args.descriptions), paths, batch_size, args)
    else:
        progress = not args.no_progress and _writes()
        if prompt is not None:
            wav_CW, rate = prompt
            conds = list(args.descriptions) or [None]
            wav = model.generate_continuation(
                np.stack([wav_CW] * len(conds)), rate, conds, progress=progress, seed=args.seed
            )
        else:
            wav = model.generate(list(args.descriptions), progress=progress, seed=args.seed)
        written = _write_all(wav, model.sample_rate, paths, args) if _writes() else []
    for path in written:
        print(path)
    return 0


def _make_mesh(args: argparse.Namespace):
    """Joins the other processes (--distributed) and builds the --mesh; None for one device.

    A mesh that needs more devices than exist is bad input (UsageError)."""
    from audiogen_jax import sharding

    if args.distributed is not None:
        sharding.initialize_distributed(args.distributed)
    if args.mesh is None:
        return None
    try:
        return sharding.make_mesh(**args.mesh_sizes)
    except sharding.ShardingError as e:
        raise UsageError(f"--mesh {args.mesh}: {e}") from e


def _batch_size(args: argparse.Namespace, mesh) -> int:
    """Clips per batch: --batch-size, or 8 rounded to the mesh's batch devices (--prompts-file);
    every output at once otherwise. A batch must split over the mesh's batch devices."""
    from audiogen_jax import sharding

    devices = 1 if mesh is None else sharding.Placement(mesh).batch_devices
    # 2 * size rows ([cond; null]) must divide over the devices: size a multiple of devices / 2.
    step = devices // math.gcd(2, devices)
    if args.prompts_file is None:
        size = len(args.descriptions or [None])
        if size % step:
            raise UsageError(
                f"--mesh {args.mesh}: {size} descriptions make {2 * size} rows with the null "
                f"condition, which do not divide over the mesh's {devices} batch devices "
                f"(data x fsdp): give a multiple of {step} descriptions"
            )
        return size
    size = args.batch_size or devices * max(1, 8 // devices)
    if size % step:
        raise UsageError(
            f"--batch-size {size} does not divide over the mesh's {devices} batch devices "
            f"(data x fsdp); use a multiple of {step}"
        )
    return size


def _writes() -> bool:
    """Whether this process writes the outputs (process 0 of a --distributed run)."""
    import jax

    return jax.process_index() == 0


def _generate_file(
    model, prompts: list[str], paths: list[str], size: int, args: argparse.Namespace
) -> list[str]:
    """--prompts-file: batches of `size` clips (the last one padded by repeating its last prompt,
    so every batch runs the same compiled program), batch k seeded with seed + k. A batch's
    existing files are kept unless --overwrite; a batch with all its files is skipped.

    Returns the paths this process wrote."""
    import jax
    from tqdm.auto import tqdm

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    written, skipped = [], 0
    bar = tqdm(
        total=len(prompts),
        desc="generating",
        unit="clip",
        disable=args.no_progress or not _writes(),
    )
    for k, first in enumerate(range(0, len(prompts), size)):
        batch, batch_paths = prompts[first : first + size], paths[first : first + size]
        todo = [p for p in batch_paths if args.overwrite or not os.path.lexists(p)]
        # Several processes run every batch in step (they share each program), so only a lone
        # process skips what it finds written.
        if not todo and jax.process_count() == 1:
            skipped += len(batch)
        else:
            padded = batch + [batch[-1]] * (size - len(batch))
            wav = model.generate(padded, seed=seed + k)[: len(batch)]
            if _writes():
                keep = [i for i, p in enumerate(batch_paths) if p in todo]
                written += _write_all(wav[keep], model.sample_rate, todo, args)
        bar.update(len(batch))
    bar.close()
    if skipped:
        print(f"{skipped} clips already in {args.out_dir} were kept", file=sys.stderr)
    return written


def _write_all(wav_B1W, sample_rate: int, paths: list[str], args: argparse.Namespace) -> list[str]:
    """Writes every output under a temporary name in out_dir, then moves them into place together
    (none is placed if any cannot be; an existing file is replaced only with --overwrite)."""
    from audiogen_jax import atomic, audio

    os.makedirs(args.out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".audiogen-", dir=args.out_dir)
    try:
        moves = []
        for w, final in zip(wav_B1W, paths, strict=True):
            stem = os.path.join(tmp, os.path.splitext(os.path.basename(final))[0])
            staged = audio.audio_write(
                stem,
                w,
                sample_rate,
                format=args.format,
                strategy=args.strategy,
                loudness_compressor=args.strategy == "loudness",
            )
            moves.append((str(staged), final))
        atomic.commit_files(moves, overwrite=args.overwrite)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The front door: help, version, one-line errors.


def train_main(argv: list[str] | None = None) -> int:
    """`audiogen-jax train`: the exit status; failures are one line."""

    def train(args: list[str]) -> int:
        from audiogen_jax import trainer

        return trainer.main(args)

    return _run(train, argv)


def toy_main(argv: list[str] | None = None) -> int:
    """`audiogen-jax toy`: train the toy model from scratch, or measure its quality."""

    def toy(args: list[str]) -> int:
        from audiogen_jax.toy import __main__ as toy_cli

        return toy_cli.main(args, prog="audiogen-jax toy")

    return _run(toy, argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str, str]] = {
    "generate": (
        generate_main,
        "text (and optionally an audio prompt) to audio files",
        'audiogen-jax generate "dog barking" --duration 5',
    ),
    "convert": (
        convert_main,
        "the released PyTorch checkpoints to a converted directory",
        "audiogen-jax convert --compression compression_state_dict.bin --lm state_dict.bin "
        "--t5 t5-large --out DIR",
    ),
    "train": (
        train_main,
        "fine-tune on a folder of captioned sounds",
        "audiogen-jax train sounds/ --model tiny-random --out runs/a --steps 200",
    ),
    "toy": (
        toy_main,
        "train the small toy model from scratch, or measure its quality",
        "audiogen-jax toy train --out DIR",
    ),
}


def _top_help() -> str:
    lines = [
        "usage: audiogen-jax {generate,convert,train,toy} ... [--debug]",
        "       audiogen-jax --help | --version",
        "",
        "AudioGen (text to audio) in JAX.",
        "",
        "commands:",
    ]
    for name, (_, what, example) in COMMANDS.items():
        lines += [f"  {name:<9} {what}", f"            e.g. {example}"]
    lines += [
        "",
        "options:",
        "  -h, --help  show this help and exit",
        "  --version   show the version and exit",
        f"  --debug     {DEBUG_HELP}",
        "",
        "`audiogen-jax COMMAND --help` shows a command's options and examples.",
    ]
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line details joined with '; ')."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return re.sub(r":;", ":", "; ".join(parts))


def _fail(e: BaseException, status: int) -> int:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return status


def _check_utf8(argv: list[str]) -> None:
    # Python decodes argv with `surrogateescape`: invalid UTF-8 survives as lone surrogates, which
    # cannot be printed, tokenized or written into names.
    for i, a in enumerate(argv):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(a).decode("utf-8", "backslashreplace")
            raise UsageError(f"argument {i + 1} is not valid UTF-8: {shown!r}") from None


def _run(command: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Runs a command on its arguments (default: the process's); any exception becomes one line,
    or its traceback with `--debug` (understood anywhere on the line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        _check_utf8(argv)
    except UsageError as e:
        return _fail(e, 2)
    try:
        return command(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            raise
        # Our own errors (bad input, bad files: ValueError and its FormatError/CheckpointError,
        # OSError, NaN logits) say what is wrong; anything else is named with its type.
        if isinstance(e, (ValueError, OSError, FloatingPointError)):
            return _fail(e, 1)
        if isinstance(e, MemoryError):
            return _fail(MemoryError("out of memory"), 1)
        return _fail(
            RuntimeError(f"{type(e).__name__}: {e} (run again with --debug for the traceback)"), 1
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_utf8(argv)  # here too, so that the message counts the command as argument 1
    except UsageError as e:
        return _fail(e, 2)
    if argv and argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv and argv[0] == "--version":
        print(f"audiogen-jax {audiogen_jax.__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(_top_help(), file=sys.stderr)
        if argv:
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
