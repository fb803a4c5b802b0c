"""Peak memory of the LM converter on a full-size random AudioGen-medium checkpoint.

    .venv/bin/python benchmarks/measure_convert_memory.py --workdir /tmp/lmconv
        [--dtype float32|bfloat16] [--keep] [--load]

Steps: (1) write a random fp16 `state_dict.bin` of 1,839,131,136 parameters in audiocraft's export
format (keys and shapes from `audiocraft_lm_shapes`, which tests/test_lm.py checks against a real
`LMModel` at tiny size); (2) run `convert_weights.py --lm` in a child process and sample its memory
(VmHWM, RssAnon, RssFile); (3) optionally (`--load`) load the result with `LMModel.from_pretrained`
in another child and report its time and peak RSS. The multi-GB files are deleted at the end
unless `--keep`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# After the sys.path line above: the script runs from a checkout without installing the package.
from audiogen_jax.config import LMConfig  # noqa: E402


def audiocraft_lm_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of audiocraft's LM `state_dict()` for `cfg` (T5 output_proj too)."""
    D, F, V = cfg.dim, cfg.ffn_dim, cfg.card
    shapes: dict[str, tuple[int, ...]] = {
        "condition_provider.conditioners.description.output_proj.weight": (D, cfg.condition_dim),
        "condition_provider.conditioners.description.output_proj.bias": (D,),
    }
    for k in range(cfg.n_q):
        shapes[f"emb.{k}.weight"] = (V + 1, D)
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        for attn in ("self_attn", "cross_attention"):
            shapes[p + attn + ".in_proj_weight"] = (3 * D, D)
            shapes[p + attn + ".out_proj.weight"] = (D, D)
        shapes[p + "linear1.weight"] = (F, D)
        shapes[p + "linear2.weight"] = (D, F)
        for norm in ("norm1", "norm2", "norm_cross"):
            shapes[p + norm + ".weight"] = (D,)
            shapes[p + norm + ".bias"] = (D,)
    shapes["out_norm.weight"] = (D,)
    shapes["out_norm.bias"] = (D,)
    for k in range(cfg.n_q):
        shapes[f"linears.{k}.weight"] = (V, D)
    return shapes


def write_random_checkpoint(path: str, cfg: LMConfig, t5_name: str = "t5-large") -> int:
    """Writes a random fp16 audiocraft LM export; returns the parameter count."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from refutil import save_audiocraft_package
    from test_lm import xp_cfg_yaml

    torch.manual_seed(0)
    state = {}
    for key, shape in audiocraft_lm_shapes(cfg).items():
        t = torch.empty(shape, dtype=torch.float16)
        t.normal_(0.0, 0.02 if len(shape) == 2 else 0.1)  # fp16 directly: no fp32 copy of the model
        state[key] = t
    save_audiocraft_package(path, state, xp_cfg_yaml(cfg, t5_name), half=True)
    return sum(t.numel() for t in state.values())


def run_child(code: str) -> tuple[float, dict[str, float], str]:
    """Runs python code in a child; returns (seconds, peak memory GiB of that child, stdout).

    Peaks, sampled from /proc/PID/status every 50 ms: `hwm` (VmHWM, the peak of all resident
    pages), `anon` (RssAnon: the process's own heap, what it really holds) and `file` (RssFile:
    pages of files it maps, e.g. safetensors' mmap, which the kernel can drop).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    peaks = {"anon": 0.0, "file": 0.0, "hwm": 0.0}
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            for name, key in (("anon", "RssAnon"), ("file", "RssFile"), ("hwm", "VmHWM")):
                kib = int(fields.get(key, "0 kB").split()[0])
                peaks[name] = max(peaks[name], kib / 2**20)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.05)
    reader.join()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {code}")
    return dt, peaks, "".join(out)


def _fmt(peak: dict[str, float]) -> str:
    return f"{peak['hwm']:.2f} GiB (anon {peak['anon']:.2f}, file-backed {peak['file']:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="/tmp/lm_convert_bench")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--load", action="store_true", help="also time LMModel.from_pretrained on the result"
    )
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    cfg = LMConfig.medium(num_layers=args.layers)
    src = os.path.join(args.workdir, "state_dict.bin")
    out = os.path.join(args.workdir, f"converted_{args.dtype}")
    if not os.path.exists(src):
        t0 = time.perf_counter()
        n = write_random_checkpoint(src, cfg)
        gb, dt = os.path.getsize(src) / 1e9, time.perf_counter() - t0
        print(f"wrote {src}: {n:,} params, {gb:.2f} GB, {dt:.0f} s")
    dt, peak, _ = run_child(
        "from audiogen_jax import cli; import sys; "
        f"sys.exit(cli.convert_main(['--lm', {src!r}, '--dtype', {args.dtype!r}, "
        f"'--out', {out!r}]))"
    )
    size = os.path.getsize(os.path.join(out, "lm.safetensors")) / 2**30
    print(
        f"convert {args.dtype}: {dt:.1f} s, lm.safetensors {size:.2f} GiB, peak RSS {_fmt(peak)} "
        f"(VmHWM / output = {peak['hwm'] / size:.2f}, RssAnon / output = {peak['anon'] / size:.2f})"
    )
    if args.load:
        dt, peak, stdout = run_child(
            "import time; t0 = time.perf_counter(); from audiogen_jax.lm import LMModel; "
            f"m = LMModel.from_pretrained({out!r}); "
            "import jax; jax.block_until_ready(jax.tree.leaves(m)); "
            "print(f'{time.perf_counter() - t0:.1f}')"
        )
        print(
            f"from_pretrained {args.dtype}: {stdout.strip()} s in-process "
            f"({dt:.1f} s with interpreter start), peak RSS {_fmt(peak)}"
        )
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
