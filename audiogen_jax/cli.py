"""Command line: `audiogen-jax generate ...` and `audiogen-jax convert ...`."""

from __future__ import annotations

import argparse
import sys

from audiogen_jax import convert


def _convert_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--compression", help="audiocraft compression_state_dict.bin (EnCodec)")
    p.add_argument("--lm", help="audiocraft state_dict.bin (the transformer LM)")
    p.add_argument("--t5", help="Hugging Face T5 checkpoint: a directory or a hub id such as t5-large")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="LM weight dtype")
    p.add_argument("--out", required=True, help="converted directory to create or update")
    return p


def convert_main(argv: list[str] | None = None) -> int:
    args = _convert_parser(argparse.ArgumentParser(description=__doc__)).parse_args(argv)
    if not (args.compression or args.lm or args.t5):
        print("nothing to convert: give --compression, --lm and/or --t5", file=sys.stderr)
        return 2
    try:
        if args.compression:
            convert.convert_compression(args.compression, args.out)
            print(f"EnCodec -> {args.out}")
        if args.t5:
            convert.convert_t5(args.t5, args.out)
            print(f"T5 -> {args.out}")
        if args.lm:
            convert.convert_lm(args.lm, args.out, dtype=args.dtype)
            print(f"LM ({args.dtype}) -> {args.out}")
    except (convert.ConversionError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        return convert_main(argv[1:])
    print("usage: audiogen-jax {generate,convert} ...", file=sys.stderr)
    return 2
