#!/usr/bin/env bash
# One command: create .venv/, install audiogen-jax with its test extras and the PyTorch reference
# (audiocraft 1.3.0 beside torch 2.13.0 CPU), then run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-warn-script-location)
# torch==2.13.0 is on every line that could pull torch: any other request would fetch a multi-GB CUDA build.
"${PIP[@]}" -U pip
"${PIP[@]}" torch==2.13.0 -c scripts/constraints.txt -e '.[test]'
# The reference: audiocraft pins torch 2.1, so it goes in without its dependencies, followed by exactly
# the packages its modules import (its own requirements would pull an older torch and xformers).
"${PIP[@]}" --no-deps audiocraft==1.3.0
"${PIP[@]}" torch==2.13.0 -c scripts/constraints.txt \
  av julius torchaudio omegaconf einops xformers num2words spacy librosa flashy torchmetrics \
  hydra-core imageio-ffmpeg
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# PyPI's torchaudio is a CUDA build; without its C++ extension it runs its pure-Python paths on CPU.
rm -f "$SP"/torchaudio/lib/*.so
# audiocraft's audio_write shells out to `ffmpeg`; imageio-ffmpeg ships a static binary.
ln -sf "$(.venv/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" .venv/bin/ffmpeg
export PATH="$PWD/.venv/bin:$PATH"
# Style gate before the (long) suite: ruff is pinned in scripts/constraints.txt, so CI cannot drift.
lint_failed() { echo "scripts/test.sh: $1 failed (files listed above); $2. Tests not run." >&2; exit 1; }
.venv/bin/ruff format --check . || lint_failed "ruff format --check" "run .venv/bin/ruff format FILES"
.venv/bin/ruff check . || lint_failed "ruff check" "fix the lines it names (see CONTRIBUTING.md)"
exec .venv/bin/python -m pytest "$@"
