#!/usr/bin/env bash
# One command on a fresh machine: install audiogen-jax's runtime (JAX, Flax, no torch) and generate
# audio offline with a model that ships with the package.
#
#   bash scripts/generate.sh "a rising chirp"
#   bash scripts/generate.sh "dog barking" "rain on a tin roof" --duration 3 --seed 0
#   MODEL=facebook/audiogen-medium bash scripts/generate.sh "dog barking"   # downloads ~7 GB once
#
# Arguments go to `audiogen-jax generate` (see its --help); without any, it generates "a rising
# chirp". Settings: MODEL (default toy, the small model trained from scratch), OUT_DIR (default out/, relative to where you run
# this), PYTHON (the interpreter for the new environment, default python3).
#
# The environment: .venv-run/ with the runtime only, or scripts/test.sh's .venv/ when that exists
# and .venv-run/ does not (it already holds the package). Installing happens once per pyproject.toml version (a stamp file
# records it); later runs start generating at once. Independent of scripts/test.sh, in either order.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-toy}
OUT_DIR=${OUT_DIR:-out}
PY=${PYTHON:-python3}

# Keep using .venv-run/ once it exists; else reuse test.sh's .venv/ rather than install twice.
VENV="$REPO/.venv-run"
if [ ! -x "$VENV/bin/python" ] && [ -x "$REPO/.venv/bin/python" ]; then VENV="$REPO/.venv"; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating ${VENV#"$REPO"/}/ ..." >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.audiogen-jax-runtime-$(cksum <"$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -e "$stamp" ]; then
  echo "installing the audiogen-jax runtime into ${VENV#"$REPO"/}/ (first run: about a minute) ..." >&2
  PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location)
  # The versions the test suite runs with (scripts/constraints.txt) need Python >= 3.11; an older
  # interpreter gets whatever pip resolves for it. The runtime never pulls torch.
  CONSTRAINTS=()
  if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    CONSTRAINTS=(-c "$REPO/scripts/constraints.txt")
  fi
  "${PIP[@]}" ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} -e "$REPO"
  rm -f "$VENV"/.audiogen-jax-runtime-*
  touch "$stamp"
fi

[ "$#" -gt 0 ] || set -- "a rising chirp"
# Defaults first: a --model, --out-dir or --duration among the arguments overrides them. The toy
# model's clips last 1.5 s (its default); other models make 2 s unless told.
DURATION=()
[ "$MODEL" = toy ] || DURATION=(--duration 2)
exec "$VENV/bin/audiogen-jax" generate --model "$MODEL" --out-dir "$OUT_DIR" ${DURATION[@]+"${DURATION[@]}"} "$@"
