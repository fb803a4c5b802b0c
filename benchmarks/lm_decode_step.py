"""Time one LM decode step (S=1 against a preallocated cache) per weight dtype, kernel layout and
batch, and profile it per compiled op.

    python benchmarks/lm_decode_step.py [--layers 8] [--batch 2] [--cache 300] [--repeats 10]
    python benchmarks/lm_decode_step.py --dtypes bfloat16 --cache 54 --profile   # where time goes
    python benchmarks/lm_decode_step.py --dtypes float32 --batch 2 6 --rounds 6   # batch 6 vs 2
    python benchmarks/lm_decode_step.py --dots --dtypes bfloat16 --layouts default --rounds 6

Medium widths (D 1536, F 6144, 24 heads, V 2048, K 4) with a reduced number of layers and random
weights. The step is jitted with its cache donated, as generation runs it (`generate.decode_steps`
carries the cache through a scan), so the cache is updated in place. Every configuration is built
once and timed in `--rounds` interleaved rounds (A B A B ...) so that load on a shared machine
falls on all of them; each line gives the median over all its steps, the weight bytes streamed per
second (every weight but the embeddings) and that as a fraction of the read bandwidth measured in
the same process (numpy sum, one thread, as `bench_generate.read_bandwidth_gbs`).

`--profile` traces `--profile-steps` further steps of each configuration (`jax.profiler`), takes
the median duration of every op of the compiled step (XLA:CPU reports each thunk by its HLO
name), and sums them by what the op does (which weight it streams, attention over the cache, the
cache write, the bf16 converts of activations, the rest). Bytes per op are its operands' bytes
(an in-place cache write counts only the new step), so bytes / time is the rate it streams at.

`--dots` times single matmuls of the step's shapes instead (per dtype, layout and `--batch` rows):
each weight alone, q/k/v and the K heads as separate matmuls or as one over stacked weights, and
the rows split into dots of 2.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import lm as lm_lib
from audiogen_jax.config import LMConfig
from benchmarks.bench_generate import read_bandwidth_gbs  # the same read probe as generation's

CONTEXT_TOKENS = 12  # L: the text condition's length
PROBE_BYTES = 1 << 30  # the read probe's array
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}


def streamed_bytes(model: lm_lib.LMModel) -> int:
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if path[0] != "emb":
            total += var.get_value().nbytes
    return total


def _load() -> float:
    return os.getloadavg()[0]


# The step as generation runs it: the cache donated, so the new step is written in place.
_donated_step = jax.jit(
    lambda lm, seq_BKS, cache, start: lm_lib._step(lm, seq_BKS, cache, start), donate_argnums=2
)


@dataclasses.dataclass
class Config:
    dtype: str
    layout: str
    batch: int
    model: lm_lib.LMModel
    cache: lm_lib.KVCache
    seq_BKS: jax.Array
    position: int = 0
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.dtype:8s} {self.layout:6s} batch {self.batch}"

    def run(self, steps: int) -> list[float]:
        """`steps` decode steps, each timed to completion; positions cycle through the cache."""
        out = []
        for _ in range(steps):
            self.position = (self.position + 1) % self.cache.max_steps
            t0 = time.perf_counter()
            logits, self.cache = _donated_step(
                self.model, self.seq_BKS, self.cache, jnp.int32(self.position)
            )
            jax.block_until_ready(logits)
            out.append(time.perf_counter() - t0)
        return out


def build(cfg: LMConfig, dtype: str, layout: str, batch: int, cache_len: int, models: dict):
    key = (dtype, layout)
    if key not in models:
        models[key] = lm_lib.LMModel(
            cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(dtype), layout=layout
        )
    model = models[key]
    rng = np.random.default_rng(0)
    cond = jnp.asarray(rng.standard_normal((batch, CONTEXT_TOKENS, cfg.dim)), jnp.float32)
    cache = lm_lib.init_cache(model, cond, cache_len)
    seq = jnp.full((batch, cfg.n_q, 1), cfg.card, jnp.int32)
    return Config(dtype, layout, batch, model, cache, seq)


# --------------------------------------------------------------------------------------------------
# The per-op profile.

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+?)\((.*?)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass
class Op:
    name: str
    opcode: str
    nbytes: int
    operands: list[str]
    dims: tuple[int, ...]
    weight: str | None  # a parameter: its model path with layer indices dropped


def parse_entry(hlo_text: str) -> dict[str, Op]:
    """The ENTRY computation's instructions (the thunks the profile names), with their sizes."""
    entry = hlo_text[hlo_text.index("\nENTRY ") :]
    ops = {}
    for line in entry.splitlines()[1:]:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, dtype, dims, opcode, operands = m.groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        nbytes = _ITEM_BYTES.get(dtype, 4) * int(np.prod(shape, dtype=np.int64))
        weight = None
        if opcode == "parameter":
            path = _OP_NAME.search(line)
            weight = re.sub(r"\[\d+\]", "", path.group(1)) if path else name
        ops[name] = Op(name, opcode, nbytes, re.findall(r"%([\w.\-]+)", operands), shape, weight)
    return ops


_WEIGHT_GROUPS = [
    ("self_attn.q_proj", "self-attn q/k/v proj"),
    ("self_attn.k_proj", "self-attn q/k/v proj"),
    ("self_attn.v_proj", "self-attn q/k/v proj"),
    ("self_attn.out_proj", "self-attn out proj"),
    ("cross_attention.q_proj", "cross-attn q proj"),
    ("cross_attention.out_proj", "cross-attn out proj"),
    ("linear1", "linear1 (D->F)"),
    ("linear2", "linear2 (F->D)"),
    ("m.linears", "output heads (K x D->V)"),
]


def classify(op: Op, ops: dict[str, Op], cache_dims: tuple, context_dims: tuple):
    """(group, bytes read) of one thunk."""
    args = [ops[a] for a in op.operands if a in ops]
    for a in args:
        if a.weight and a.weight.endswith(".kernel.value") and a.dims[0] * a.dims[-1] > 10**5:
            group = next(g for key, g in _WEIGHT_GROUPS if key in a.weight)
            return group, sum(x.nbytes for x in args)
    if any(a.weight and ".emb." in a.weight for a in args):  # a lookup: reads the rows it gathers
        return "other (norms, residual, embed)", op.nbytes
    if "dynamic-update-slice" in op.name:  # in place: reads the new step only
        return "cache write", sum(x.nbytes for x in args if x.dims != cache_dims)
    shapes = [x.dims for x in args] + [op.dims]
    M, L = cache_dims[2], context_dims[2]
    if any(s == cache_dims or (len(s) == 4 and s[-1] == M) for s in shapes):
        return "self-attn over the cache", sum(x.nbytes for x in args)
    if any(s == context_dims or (len(s) == 4 and s[-1] == L) for s in shapes):
        return "cross-attn over the text", sum(x.nbytes for x in args)
    if op.name.startswith("copy"):
        return "copies", sum(x.nbytes for x in args)
    if op.name.startswith("convert"):
        return "activation converts", sum(x.nbytes for x in args)
    return "other (norms, residual, embed)", sum(x.nbytes for x in args)


def op_events(xplane_path: str, names) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of every traced event whose name is an op of the step, per op; and the gaps (s)
    between one op's end and the next op's start where no op runs (on any thread)."""
    data = jax.profiler.ProfileData.from_file(xplane_path)
    out = collections.defaultdict(list)
    spans = []
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in names:
                    out[ev.name].append(ev.duration_ns * 1e-9)
                    spans.append((ev.start_ns, ev.start_ns + ev.duration_ns))
    spans.sort()
    gaps, end = [], spans[0][1] if spans else 0
    for a, b in spans[1:]:
        if a > end:
            gaps.append((a - end) * 1e-9)
        end = max(end, b)
    return out, gaps


def profile(configs: list[Config], rounds: int, steps: int, read_gbs: float) -> None:
    """Per-op profile of each configuration, traced in interleaved rounds (see module doc)."""
    tables = []
    for c in configs:
        compiled = _donated_step.lower(c.model, c.seq_BKS, c.cache, jnp.int32(0)).compile()
        tables.append((parse_entry(compiled.as_text()), collections.defaultdict(list), [], []))
    loads = [_load()]
    for _ in range(rounds):
        for c, (ops, durations, wall, gaps) in zip(configs, tables, strict=True):
            with tempfile.TemporaryDirectory() as d:
                with jax.profiler.trace(d):
                    wall += c.run(steps)
                (xplane,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
                per_op, idle = op_events(xplane, set(ops))
                for name, ds in per_op.items():
                    durations[name] += ds
                gaps += idle
        loads.append(_load())
    for c, (ops, durations, wall, gaps) in zip(configs, tables, strict=True):
        print_profile(c, ops, durations, wall, gaps, rounds * steps, read_gbs, loads)


def print_profile(c, ops, durations, wall, gaps, steps, read_gbs, loads) -> None:
    cache_dims = tuple(c.cache.self_attn[0].keys.shape)
    context_dims = tuple(c.cache.cross_attention[0].keys.shape)
    groups = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # ops, s (median, p10), bytes
    for name, ds in durations.items():
        group, nbytes = classify(ops[name], ops, cache_dims, context_dims)
        per_step = len(ds) / steps
        g = groups[group]
        g[0] += per_step
        g[1] += statistics.median(ds) * per_step
        g[2] += float(np.percentile(ds, 10)) * per_step
        g[3] += nbytes * per_step
    total = [sum(g[i] for g in groups.values()) for i in range(4)]
    step_s = statistics.median(wall)
    print(
        f"\nprofile: {c.label}, {steps} traced steps, load {min(loads):.1f}-{max(loads):.1f}, "
        f"read probe {read_gbs:.1f} GB/s. Per op: median (p10) over the steps, summed per group\n"
        f"| op group | ops/step | ms/step | share | MB read/step | GB/s | x read probe |\n"
        f"|---|---|---|---|---|---|---|"
    )
    for name, (n, s, s10, b) in [*sorted(groups.items(), key=lambda kv: -kv[1][1]), ("sum", total)]:
        print(
            f"| {name} | {n:.0f} | {s * 1e3:.2f} ({s10 * 1e3:.2f}) | {s / total[1]:.0%} | "
            f"{b / 1e6:.1f} | {b / s / 1e9:.1f} ({b / s10 / 1e9:.1f}) | "
            f"{b / s / 1e9 / read_gbs:.2f} ({b / s10 / 1e9 / read_gbs:.2f}) |"
        )
    floor_s = total[3] / (read_gbs * 1e9)
    print(
        f"step wall while traced: median {step_s * 1e3:.2f} ms, p10 "
        f"{np.percentile(wall, 10) * 1e3:.2f} ms; sum of op medians {total[1] * 1e3:.2f} ms; "
        f"floor (bytes / read probe) {floor_s * 1e3:.2f} ms"
    )
    short = sorted(gaps)[: len(gaps) * 9 // 10]
    print(
        f"no op running: {len(gaps) / steps:.0f} gaps/step, median gap "
        f"{statistics.median(gaps) * 1e6:.1f} us, {sum(gaps) / steps * 1e3:.2f} ms/step in all "
        f"({sum(short) / steps * 1e3:.2f} ms/step without the longest tenth)"
    )


# --------------------------------------------------------------------------------------------------
# Single matmuls, outside the step: kernel layout, rows, and fused formulations.


def _dot(x_MI: jax.Array, w: jax.Array, layout: str) -> jax.Array:
    contract = 0 if layout == "in_out" else 1
    dims = (((1,), (contract,)), ((), ()))
    return jax.lax.dot_general(x_MI.astype(w.dtype), w, dims, preferred_element_type=jnp.float32)


def dot_cases(cfg: LMConfig, dtype: str, layout: str, rows: int) -> dict:
    """name -> (jitted fn, x, list of weight sets): every set a distinct copy, 200 MB in all, so
    no weight stays in the CPU's last-level cache between calls (as in a step)."""
    rng = np.random.default_rng(0)
    D, F, V, K = cfg.dim, cfg.ffn_dim, cfg.card, cfg.n_q

    def weights(shapes):
        nbytes = sum(a * b for a, b in shapes) * jnp.dtype(dtype).itemsize
        return [
            [
                jnp.asarray(rng.standard_normal(sh if layout == "in_out" else sh[::-1]), dtype)
                for sh in shapes
            ]
            for _ in range(max(1, int(200e6 // nbytes)))
        ]

    fuse = 1 if layout == "in_out" else 0  # the output axis, along which fused weights stack
    one = jax.jit(lambda x, ws: [_dot(x, w, layout) for w in ws])
    split = jax.jit(
        lambda x, ws: [
            jnp.concatenate([_dot(x[i : i + 2], w, layout) for i in range(0, rows, 2)]) for w in ws
        ]
    )
    x = {n: jnp.ones((rows, n), jnp.float32) for n in (D, F)}
    cases = {
        f"[{D}, {F}] (linear1)": (one, x[D], weights([(D, F)])),
        f"[{F}, {D}] (linear2)": (one, x[F], weights([(F, D)])),
        f"3 x [{D}, {D}] (q, k, v)": (one, x[D], weights([(D, D)] * 3)),
        f"{K} x [{D}, {V}] (heads)": (one, x[D], weights([(D, V)] * K)),
    }
    # Fused: one matmul over weights stacked once, outside the timing (as a model would hold them).
    for name, shapes in [
        ("q, k, v as one matmul", [(D, D)] * 3),
        ("heads as one matmul", [(D, V)] * K),
    ]:
        stacked = [[jnp.concatenate(ws, axis=fuse)] for ws in weights(shapes)]
        cases[name] = (one, x[D], stacked)
    if rows > 2 and rows % 2 == 0:
        cases[f"[{D}, {F}] as {rows // 2} dots of 2 rows"] = (split, x[D], weights([(D, F)]))
    return cases


def time_dots(cfg: LMConfig, args) -> None:
    cases = {}
    for dtype in args.dtypes:
        for layout in dict.fromkeys(
            lm_lib.kernel_layout(dtype) if x == "default" else x for x in args.layouts
        ):
            for rows in args.batch:
                for name, case in dot_cases(cfg, dtype, layout, rows).items():
                    cases[f"{dtype:8s} {layout:6s} rows {rows}: {name}"] = case
    times = {k: [] for k in cases}
    for fn, x, sets in cases.values():
        jax.block_until_ready(fn(x, sets[0]))
    loads = [_load()]
    for _ in range(args.rounds):
        for key, (fn, x, sets) in cases.items():
            for ws in sets:
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x, ws))
                times[key].append(time.perf_counter() - t0)
        loads.append(_load())
    read_gbs = read_bandwidth_gbs(PROBE_BYTES)
    print(f"single matmuls: load {min(loads):.1f}-{max(loads):.1f}, read probe {read_gbs:.1f} GB/s")
    for key, (_, _, sets) in cases.items():
        nbytes = sum(w.nbytes for w in sets[0])
        med, p10 = statistics.median(times[key]), float(np.percentile(times[key], 10))
        print(
            f"{key:58s} median {med * 1e3:6.2f} ms, p10 {p10 * 1e3:6.2f} ms = "
            f"{nbytes / p10 / 1e9:5.1f} GB/s of weights"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, nargs="+", default=[2])
    ap.add_argument("--cache", type=int, default=300, help="M, cache slots (1 s generation: 54)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=["in_out", "out_in"],
        help="kernel layouts to time ('default': the one generation uses for the dtype)",
    )
    ap.add_argument("--repeats", type=int, default=10, help="steps per configuration per round")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (A B A B ...)")
    ap.add_argument("--profile", action="store_true", help="per-op profile of each configuration")
    ap.add_argument("--profile-steps", type=int, default=10, help="traced steps per round")
    ap.add_argument("--dots", action="store_true", help="time single matmuls instead of the step")
    args = ap.parse_args()
    cfg = LMConfig.medium(num_layers=args.layers)
    if args.dots:
        time_dots(cfg, args)
        return
    print(
        f"jax {jax.__version__}, {args.layers} layers, cache {args.cache}, "
        f"{args.rounds} rounds x {args.repeats} steps, load average {_load():.1f}"
    )
    models: dict = {}
    configs = []
    for dtype in args.dtypes:
        layouts = [lm_lib.kernel_layout(dtype) if x == "default" else x for x in args.layouts]
        for layout in dict.fromkeys(layouts):
            for batch in args.batch:
                c = build(cfg, dtype, layout, batch, args.cache, models)
                c.run(2)  # compile and warm up
                configs.append(c)
    read_gbs = read_bandwidth_gbs(PROBE_BYTES)
    loads = [_load()]
    for _ in range(args.rounds):
        for c in configs:
            c.times += c.run(args.repeats)
        loads.append(_load())
    read_gbs = max(read_gbs, read_bandwidth_gbs(PROBE_BYTES))
    print(
        f"read probe {read_gbs:.1f} GB/s; load during the rounds {min(loads):.1f}-{max(loads):.1f}"
    )
    for c in configs:
        s = statistics.median(c.times)
        gb = streamed_bytes(c.model) / 1e9
        p10 = np.percentile(c.times, 10)
        print(
            f"{c.label}: median {s * 1e3:6.1f} ms/step (p10 {p10 * 1e3:6.1f})  "
            f"{gb / s:5.1f} GB/s of weights = {gb / s / read_gbs:.2f} x read probe"
        )
    if args.profile:
        profile(configs, args.rounds, args.profile_steps, read_gbs)


if __name__ == "__main__":
    main()
