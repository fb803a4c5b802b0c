"""The course: every notebook under notebooks/ runs top to bottom and shows what it declares, and
its rendered copy in docs/course/ is in sync (one test each per notebook).

Each notebook is executed with nbclient on the 'python3' kernel, in notebooks/ as the working
directory, with `MPLBACKEND` unset so that ipykernel's inline backend turns figures into outputs.
A failing cell fails its test with that cell's source and traceback. Then every cell that calls
`plt.show()` must have output an image, and every cell that calls `Audio(` an audio player (the
rules are in `scripts/course.py`). The exercises' answer snippets (```python blocks in folded
`<details>`) run after the last cell, so an answer that no longer runs fails the test. Notebooks
are discovered at collection time: a missing notebook is simply not collected (never skipped).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import course  # noqa: E402  (scripts/ is not a package)

NOTEBOOKS = course.sources()


def test_display_rules_catch_missing_outputs() -> None:
    """The checker itself: a drawing cell without an image, a player without a call, an error."""
    import nbformat

    v4 = nbformat.v4
    png = v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    player = v4.new_output("display_data", data={"text/html": "<audio controls></audio>"})
    error = v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])
    nb = v4.new_notebook(
        cells=[
            v4.new_code_cell("fig, ax = plt.subplots()\nplt.show()", outputs=[png]),  # fine
            v4.new_code_cell("plt.plot([1])\nplt.show()"),  # declared, no image
            v4.new_code_cell("x = 1", outputs=[png]),  # image not declared
            v4.new_code_cell("# display(Audio(y))\nx = 2", outputs=[player]),  # commented out
            v4.new_code_cell("for y in ys:\n    display(Audio(y, rate=8000))"),  # no player
            v4.new_code_cell("1 / 0", outputs=[error]),
            v4.new_markdown_cell("plt.show() in prose declares nothing"),
        ]
    )
    problems = course.display_problems(nb)
    expected = [
        "cell 1 ('plt.plot([1])'): calls plt.show() 1x but output 0 image(s)",
        "cell 2 ('x = 1'): outputs 1 image(s) without calling plt.show()",
        "cell 3 ('# display(Audio(y))'): outputs 1 audio player(s) without calling Audio(",
        "cell 4 ('for y in ys:'): calls Audio( 1x but output 0 audio player(s)",
        "cell 5 ('1 / 0'): raised ValueError: bad",
    ]
    assert problems == expected


def test_answer_snippets_found() -> None:
    import nbformat

    v4 = nbformat.v4
    cell = v4.new_markdown_cell(
        "**1.** Q?\n\n```python\nshown = 0\n```\n<details><summary>Answer</summary>\n\n"
        "```python\nx = 1\n```\ntext\n```python\ny = 2\n```\n</details>"
    )
    nb = v4.new_notebook(cells=[cell, v4.new_code_cell("```python\nz = 3\n```")])
    assert course.answer_snippets(nb) == ["x = 1\n", "y = 2\n"]


# Defined only when there is something to run: an empty parametrization would be reported as a skip.
if NOTEBOOKS:

    @pytest.mark.timeout(course.TIMEOUT_S)
    @pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
    def test_notebook_runs_and_shows(path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # A CI machine may set MPLBACKEND=Agg; the kernel must not inherit it.
        monkeypatch.delenv("MPLBACKEND", raising=False)
        try:
            nb = course.execute(path, with_answers=True)
        except course.NotebookError as e:
            pytest.fail(str(e), pytrace=False)
        problems = course.display_problems(nb)
        assert not problems, f"{path.name}:\n" + "\n".join(problems)

    @pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
    def test_rendered_copy_in_sync(path: pathlib.Path) -> None:
        problems = course.sync_problems(path)
        assert not problems, "\n".join(problems)


def test_no_orphan_rendered_copies() -> None:
    assert not course.orphans(), "rendered copies without a source; run scripts/course.py build"
