"""Shared test fixtures: the PyTorch reference (audiocraft), made to fail, never skip, in CI."""

from __future__ import annotations

import os
import sys

import pytest

# The reference and JAX both use the 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# audiocraft's audio_write shells out to `ffmpeg`, which the setup script links into .venv/bin.
_bin = os.path.dirname(sys.executable)
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_reference():
    """Imports audiocraft (and torch). Missing reference: a failure in CI, a skip elsewhere."""
    try:
        import audiocraft  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means no reference
        msg = f"the PyTorch reference (audiocraft 1.3.0 + torch 2.13.0) cannot be imported: {e!r}"
        if IN_CI:
            pytest.fail(
                msg + " -- in CI a parity test must run; run scripts/test.sh", pytrace=False
            )
        pytest.skip(msg + " (not CI; run scripts/test.sh to install it)")
    import torch

    torch.set_num_threads(2)
    return audiocraft


@pytest.fixture(scope="session")
def reference():
    return require_reference()


@pytest.fixture(scope="session")
def spiece_dir(tmp_path_factory):
    """A directory holding a small T5-layout `spiece.model`.

    8000 pieces; 8100 ids with T5's extra ids.
    """
    from spm_util import make_spiece_dir

    return make_spiece_dir(tmp_path_factory.mktemp("spiece"))
