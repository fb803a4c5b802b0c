"""The toy AudioGen's quality: generate for fixed captions, read the clips back with the checker.

    python -m audiogen_jax.toy quality                 # the shipped model, CFG 0, 1, 2 and 3
    python -m audiogen_jax.toy quality --model DIR --cfg 3
    python -m audiogen_jax.toy quality --caption "a high beep repeated three times" --clips 20

The captions are one per scene of the world (`world.ALL_SCENES`: 58 training scenes and the 5
held-out ones, whose words never occur together in training), each phrased by a fixed draw of the
world's caption grammar. Every caption gets `CLIPS_PER_CAPTION` clips, sampled with the model's
own settings (top-k, temperature) and the given guidance coefficients; each clip is read by
`checker.read` and scored against its caption's scene (`checker.score`). Same seed, same numbers.
`per_caption` does the same for captions of your own, many clips each, and counts the events heard.

Batches: by default each caption's clips are generated together, alone, as `audiogen-jax generate
"..."` does (no caption is padded); `batching="mixed"` generates 128 clips of different captions
per call, padded to the longest as AudioGen pads a batch (the LM's cross-attention sees the padded
zero keys, so the two can differ).
"""

from __future__ import annotations

import collections

import numpy as np

from audiogen_jax.toy import checker, world

CLIPS_PER_CAPTION = 4
CFG_COEFS = (0.0, 1.0, 2.0, 3.0)
CAPTION_SEED = 20_000  # the captions' phrasing draw (training draws its captions with seed 0)
CHUNK = 128  # clips generated per call, mixed batches
BATCHINGS = ("caption", "mixed")


def captions() -> list[tuple[str, world.Scene]]:
    """(caption, scene) for every scene of the world: 63, the 5 held-out ones last."""
    scenes = [s for s in world.ALL_SCENES if s not in world.HELD_OUT] + list(world.HELD_OUT)
    out = []
    for i, scene in enumerate(scenes):
        text = world.caption(scene, np.random.default_rng((CAPTION_SEED, i)))
        out.append((text, scene))
    return out


def score_clips(
    wav_BW: np.ndarray, scenes: list[world.Scene], sample_rate: int
) -> list[dict[str, bool | None]]:
    """The checker's verdict on each clip against the scene it should be."""
    return [
        checker.score(scene, checker.read(w, sample_rate))
        for w, scene in zip(wav_BW, scenes, strict=True)
    ]


def generate_scored(
    model, cfg_coef: float, clips: int, seed: int, batching: str = "caption"
) -> list[tuple[str, dict]]:
    """(caption, score) for `clips` clips of every caption, generated with `cfg_coef`, each
    caption's clips in one call ("caption") or `CHUNK` clips of mixed captions per call."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    pairs = [pair for pair in captions() for _ in range(clips)]
    model.set_generation_params(cfg_coef=cfg_coef)
    size = clips if batching == "caption" else CHUNK
    scored = []
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        wav = model.generate([c for c, _ in chunk], seed=seed + start)
        verdicts = score_clips(wav[:, 0], [s for _, s in chunk], model.sample_rate)
        scored += [(c, v) for (c, _), v in zip(chunk, verdicts, strict=True)]
    return scored


def measure(
    name_or_dir: str,
    cfg_coefs=CFG_COEFS,
    clips: int = CLIPS_PER_CAPTION,
    seed: int = 0,
    batching: str = "caption",
):
    """Per guidance coefficient, the checker's accuracy per property on the training scenes,
    the held-out scenes, and all of them.

    Returns:
      {"model", "captions", "clips_per_caption", "batching", "results": [{"cfg_coef", "train",
      "heldout", "all"} with each a {property: accuracy} dict and "clips"]}.
    """
    from audiogen_jax.audiogen import AudioGen

    model = AudioGen.from_pretrained(name_or_dir)
    heldout = {c for c, s in captions() if s in world.HELD_OUT}
    results = []
    for coef in cfg_coefs:
        tallies = {"train": checker.Tally(), "heldout": checker.Tally(), "all": checker.Tally()}
        scored = generate_scored(model, float(coef), clips, seed, batching)
        for caption, verdict in scored:
            tallies["heldout" if caption in heldout else "train"].add(verdict)
            tallies["all"].add(verdict)
        row = {"cfg_coef": float(coef)}
        for split, tally in tallies.items():
            row[split] = {**tally.accuracy(), "clips": tally.totals["exact"]}
        results.append(row)
    return {
        "model": str(name_or_dir),
        "captions": len(captions()),
        "clips_per_caption": clips,
        "batching": batching,
        "results": results,
    }


def per_caption(name_or_dir: str, texts: list[str], cfg_coefs, clips: int, seed: int):
    """For each guidance coefficient and caption (read by `world.parse_caption`): `clips` clips
    generated together, alone, as `audiogen-jax generate` does, and how many the checker reads
    exactly right and how many events it hears in each.

    Returns:
      [{"caption", "cfg_coef", "clips", "exact", "events"}], "events" a {events heard: clips} dict.
    """
    from audiogen_jax.audiogen import AudioGen

    model = AudioGen.from_pretrained(name_or_dir)
    rows = []
    for coef in cfg_coefs:
        model.set_generation_params(cfg_coef=float(coef))
        for text in texts:
            scene = world.parse_caption(text)
            wav = model.generate([text] * clips, seed=seed)
            heard = [checker.read(w, model.sample_rate) for w in wav[:, 0]]
            exact = sum(bool(checker.score(scene, h)["exact"]) for h in heard)
            events = collections.Counter(len(h) for h in heard)
            rows.append(
                {
                    "caption": text,
                    "cfg_coef": float(coef),
                    "clips": clips,
                    "exact": exact,
                    "events": dict(sorted(events.items())),
                }
            )
    return rows


def per_caption_table(rows: list[dict]) -> str:
    """`per_caption`'s rows as a Markdown table."""
    lines = ["| caption | CFG | exact | events heard: clips |", "|---|---|---|---|"]
    for r in rows:
        heard = ", ".join(f"{n}: {c}" for n, c in r["events"].items())
        lines.append(
            f"| {r['caption']} | {r['cfg_coef']:g} | {r['exact']}/{r['clips']} | {heard} |"
        )
    return "\n".join(lines)


def table(measured: dict) -> str:
    """The results as a Markdown table (percentages)."""
    props = checker.PROPERTIES
    lines = [
        "| CFG | scenes | clips | " + " | ".join(props) + " |",
        "|---|---|---|" + "---|" * len(props),
    ]
    for row in measured["results"]:
        for split in ("train", "heldout", "all"):
            acc = row[split]
            cells = [f"{100 * acc[p]:.1f}%" if p in acc else "-" for p in props]
            lines.append(f"| {row['cfg_coef']:g} | {split} | {acc['clips']} | " + " | ".join(cells))
    return "\n".join(line + (" |" if not line.endswith("|") else "") for line in lines)
