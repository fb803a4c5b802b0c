"""Command line: `audiogen-jax generate ...` and `audiogen-jax convert ...`.

    audiogen-jax generate "dog barking" "sirens of an emergency vehicle" --duration 5 \
        --out-dir out/ --seed 0
    audiogen-jax generate "rain" --model tiny-random --duration 1 --out-dir out/   # offline, noise
    audiogen-jax generate "footsteps" --continue prompt.wav --duration 6 --out-dir out/
    audiogen-jax generate --prompts-file prompts.txt --mesh data=8 --out-dir out/  # one per line
    audiogen-jax convert --compression compression_state_dict.bin --lm state_dict.bin \
        --t5 t5-large --out DIR

`generate` checks every argument before loading anything, writes each file to a temporary name and
renames it only when all outputs are done (a failure leaves no partial files), and prints where each
file went. With `--prompts-file` the clips are generated in batches of `--batch-size` under one
progress bar, each batch's files renamed into place when the batch is done; a batch whose files
all exist already is skipped, so an interrupted run continues where it stopped. `--mesh` spreads
the weights and the batch over devices (`sharding.py`). Files are written as the reference's
documented usage does: loudness-normalised to -14 LUFS with the tanh compressor (`--strategy
loudness`), 16-bit WAV, or 24-bit FLAC with `--format flac`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
import soundfile
from tqdm.auto import tqdm

from audiogen_jax import audio, presets, sampling, sharding
from audiogen_jax.audiogen import DEFAULT_MODEL, AudioGen
from audiogen_jax.encodec_params import convert_compression
from audiogen_jax.io.errors import FormatError
from audiogen_jax.lm_params import convert_lm
from audiogen_jax.t5_params import convert_t5

STRATEGIES = ("loudness", "peak", "rms", "clip")
FORMATS = ("wav", "flac")


def _convert_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--compression", help="audiocraft compression_state_dict.bin (EnCodec)")
    p.add_argument("--lm", help="audiocraft state_dict.bin (the transformer LM)")
    p.add_argument(
        "--t5", help="Hugging Face T5 checkpoint: a directory or a hub id such as t5-large"
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="LM weight dtype"
    )
    p.add_argument("--out", required=True, help="converted directory to create or update")
    return p


def convert_main(argv: list[str] | None = None) -> int:
    args = _convert_parser(argparse.ArgumentParser(description=__doc__)).parse_args(argv)
    if not (args.compression or args.lm or args.t5):
        print("nothing to convert: give --compression, --lm and/or --t5", file=sys.stderr)
        return 2
    try:
        if args.compression:
            convert_compression(args.compression, args.out)
            print(f"EnCodec -> {args.out}")
        if args.t5:
            convert_t5(args.t5, args.out)
            print(f"T5 -> {args.out}")
        if args.lm:
            convert_lm(args.lm, args.out, dtype=args.dtype)
            print(f"LM ({args.dtype}) -> {args.out}")
    except (FormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audiogen-jax generate", description="Text to audio with AudioGen."
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
        help=f"hub id (default {DEFAULT_MODEL}), a converted directory, or 'tiny-random'",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds of audio (default 5)")
    p.add_argument("--out-dir", required=True, help="directory for the audio files")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
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
        default=2.0,
        help="seconds each window moves beyond the model's max duration (default 2)",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading the model; raises ValueError."""
    if args.prompts_file is not None:
        if args.descriptions or args.prompt is not None:
            raise ValueError("--prompts-file takes no other descriptions and no --continue")
        args.descriptions = _read_prompts(args.prompts_file)
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    elif args.batch_size is not None:
        raise ValueError("--batch-size applies to --prompts-file")
    if args.mesh is not None:
        args.mesh_sizes = sharding.parse_mesh(args.mesh)
    if args.distributed is not None and args.seed is None:
        raise ValueError("--distributed needs --seed: every process must draw the same numbers")
    if not args.descriptions and args.prompt is None:
        raise ValueError("give at least one description (or --continue PROMPT.wav)")
    for i, d in enumerate(args.descriptions):
        if not d.strip():
            raise ValueError(f"description {i + 1} is empty")
    if not math.isfinite(args.duration) or args.duration <= 0:
        raise ValueError(f"--duration must be a positive number of seconds, got {args.duration}")
    # SamplingParams is where sampling settings are validated (the model's codebook size, which
    # bounds top-k, is checked once it is loaded).
    sampling.SamplingParams(**_sampling_settings(args))
    if args.prompt is not None and not os.path.isfile(args.prompt):
        raise ValueError(f"--continue {args.prompt}: no such file")
    _check_writable(args.out_dir)


def _check_writable(out_dir: str) -> None:
    """The output directory exists and is writable, or can be created (it is not created here)."""
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"--out-dir {out_dir} exists and is not a directory")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise ValueError(f"--out-dir {out_dir} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"--out-dir {out_dir} cannot be created: {parent} is not a writable directory"
        )


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


def _read_prompts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--prompts-file {path}: cannot be read ({e})") from e
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"--prompts-file {path}: no descriptions (every line is blank)")
    return prompts


def _read_prompt(path: str):
    try:
        wav_WC, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"--continue {path}: not a readable audio file ({e})") from e
    return wav_WC.T, rate


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:n] or "audio"


def generate_main(argv: list[str] | None = None) -> int:
    args = _generate_parser().parse_args(argv)
    try:
        _check_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.distributed is not None:
            sharding.initialize_distributed(args.distributed)
        if args.model == presets.TINY_RANDOM:
            print(presets.NOISE_WARNING, file=sys.stderr)
        mesh = None if args.mesh is None else sharding.make_mesh(**args.mesh_sizes)
        model = AudioGen.from_pretrained(
            args.model, dtype=args.dtype, cache_dir=args.cache_dir, mesh=mesh
        )
        model.set_generation_params(
            duration=args.duration, extend_stride=args.extend_stride, **_sampling_settings(args)
        )
        progress = not args.no_progress
        descriptions = list(args.descriptions)
        if args.prompts_file is not None:
            written = _generate_file(model, descriptions, args)
        elif args.prompt is not None:
            prompt, rate = _read_prompt(args.prompt)
            conds = descriptions or [None]
            wav = model.generate_continuation(
                np.stack([prompt] * len(conds)), rate, conds, progress=progress, seed=args.seed
            )
            names = [_slug(d) if d else "continuation" for d in conds]
        else:
            wav = model.generate(descriptions, progress=progress, seed=args.seed)
            names = [_slug(d) for d in descriptions]
        if args.prompts_file is None:
            written = _write_all(wav, model.sample_rate, names, args) if _writes() else []
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _processes() -> int:
    import jax

    return jax.process_count()


def _writes() -> bool:
    """Whether this process writes the outputs (process 0 of a --distributed run)."""
    import jax

    return jax.process_index() == 0


def _generate_file(model: AudioGen, prompts: list[str], args: argparse.Namespace) -> list[str]:
    """--prompts-file: batches of --batch-size clips (the last one padded by repeating its last
    prompt, so every batch runs the same compiled program), batch k seeded with seed + k."""
    devices = 1 if model.placement is None else model.placement.batch_devices
    size = args.batch_size or devices * max(1, 8 // devices)
    # 2 * size rows ([cond; null]) must divide over the devices: size a multiple of devices / 2.
    step = devices // math.gcd(2, devices)
    if size % step:
        raise ValueError(
            f"--batch-size {size} does not divide over the mesh's {devices} batch devices "
            f"(data x fsdp); use a multiple of {step}"
        )
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    width = max(2, len(str(len(prompts) - 1)))
    ext = "." + args.format
    written, skipped = [], 0
    bar = tqdm(
        total=len(prompts),
        desc="generating",
        unit="clip",
        disable=args.no_progress or not _writes(),
    )
    for k, first in enumerate(range(0, len(prompts), size)):
        batch = prompts[first : first + size]
        names = [_slug(d) for d in batch]
        stems = [f"{first + i:0{width}d}_{n}" for i, n in enumerate(names)]
        paths = [os.path.join(args.out_dir, stem + ext) for stem in stems]
        # Several processes run every batch in step (they share each program), so only a lone
        # process skips what it finds written.
        if _processes() == 1 and all(os.path.isfile(p) for p in paths):
            skipped += len(batch)
        else:
            padded = batch + [batch[-1]] * (size - len(batch))
            wav = model.generate(padded, seed=seed + k)[: len(batch)]
            if not _writes():
                continue
            paths = _write_all(wav, model.sample_rate, names, args, first=first, width=width)
        written += paths
        bar.update(len(batch))
    bar.close()
    if skipped:
        print(f"{skipped} clips already in {args.out_dir} were kept", file=sys.stderr)
    return written


def _write_all(
    wav_B1W,
    sample_rate: int,
    names: list[str],
    args: argparse.Namespace,
    first: int = 0,
    width: int = 2,
) -> list[str]:
    """Writes every output into a temporary directory in out_dir, then renames them into place.

    File i is named f"{first + i:0{width}d}_{names[i]}.{format}"."""
    os.makedirs(args.out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".audiogen-", dir=args.out_dir)
    try:
        staged = []
        for i, (w, name) in enumerate(zip(wav_B1W, names, strict=True)):
            stem = f"{first + i:0{width}d}_{name}"
            path = audio.audio_write(
                os.path.join(tmp, stem),
                w,
                sample_rate,
                format=args.format,
                strategy=args.strategy,
                loudness_compressor=args.strategy == "loudness",
            )
            staged.append((str(path), os.path.join(args.out_dir, os.path.basename(str(path)))))
        for src, dst in staged:
            os.replace(src, dst)
        return [dst for _, dst in staged]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        return convert_main(argv[1:])
    if argv and argv[0] == "generate":
        return generate_main(argv[1:])
    if argv and argv[0] == "train":
        from audiogen_jax import trainer

        return trainer.main(argv[1:])
    print(
        "usage: audiogen-jax {generate,convert,train} ...  (see audiogen-jax generate --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
