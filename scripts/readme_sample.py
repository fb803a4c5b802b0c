"""Writes the README's sound samples: the shipped toy model, each caption generated alone at seed 0
(as `audiogen-jax generate --model toy --seed 0` does), the WAV files and one spectrogram figure
titled with what the toy world's checker hears.

    .venv/bin/python scripts/readme_sample.py            # -> docs/samples/
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")  # a script writing a PNG, not a notebook
import matplotlib.pyplot as plt  # noqa: E402

from audiogen_jax import AudioGen  # noqa: E402
from audiogen_jax.audio import audio_write  # noqa: E402
from audiogen_jax.toy import checker, world  # noqa: E402

CAPTIONS = (
    "a rising chirp",
    "a falling chirp then a high beep",
    "a high beep repeated three times",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = AudioGen.from_pretrained("toy")
    sr = model.sample_rate
    fig, axes = plt.subplots(1, len(CAPTIONS), figsize=(4 * len(CAPTIONS), 2.8), squeeze=False)
    for ax, text in zip(axes[0], CAPTIONS, strict=True):
        wav_W = model.generate([text], seed=args.seed)[0, 0]
        heard = checker.read(wav_W, sr)
        exact = checker.score(world.parse_caption(text), heard)["exact"]
        name = text.replace(" ", "_")
        audio_write(out / name, wav_W, sr, strategy="loudness", loudness_compressor=True)
        ax.specgram(wav_W, Fs=sr, NFFT=256, noverlap=192, cmap="magma")
        verdict = "right" if exact else "wrong"
        ax.set_title(f'"{text}"\nchecker: {", ".join(map(str, heard))} ({verdict})', fontsize=9)
        ax.set(xlabel="s", ylabel="Hz")
        print(f"{text!r}: heard {[str(e) for e in heard]}, {verdict}")
    fig.tight_layout()
    fig.savefig(out / "toy_samples.png", dpi=90)
    print(f"wrote {out}/")


if __name__ == "__main__":
    main()
