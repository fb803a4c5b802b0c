"""Every notebook under notebooks/ runs top to bottom (one test per notebook).

Each notebook is executed with nbclient on the 'python3' kernel, in notebooks/ as the working
directory, with the Agg matplotlib backend. A failing cell fails its test with that cell's source
and traceback. Notebooks are discovered at collection time: a missing notebook is simply not
collected (never skipped).
"""

from __future__ import annotations

import pathlib
import re

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT_S = 600
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the kernel colours its tracebacks


def _execute(path: pathlib.Path) -> None:
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        # The exception text holds the failing cell's source and its traceback.
        pytest.fail(f"{path.name} failed:\n{_ANSI.sub('', str(e))}", pytrace=False)


# Defined only when there is something to run: an empty parametrization would be reported as a skip.
if NOTEBOOKS:

    @pytest.mark.timeout(TIMEOUT_S)
    @pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
    def test_notebook_runs(path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # The kernel inherits this process's environment.
        monkeypatch.setenv("MPLBACKEND", "Agg")
        _execute(path)
