"""The course's notebooks: run them, check that they show what they draw and play, and keep the
rendered copies (executed, with figures and audio players) in sync with the sources.

    python scripts/course.py build                  # notebooks/*.ipynb -> docs/course/*.ipynb
    python scripts/course.py build 01_encodec       # one notebook
    python scripts/course.py build --html           # also docs/_build/course/*.html
    python scripts/course.py check                  # rendered copies match the sources

`notebooks/` holds the sources without outputs: they are what people edit, so their diffs stay
readable and merges clean. `docs/course/` holds the same notebooks executed, so a reader sees every
figure on the repository's page without running anything. `tests/test_notebooks.py` executes every
source notebook and runs `check`, so a rendered copy whose cells differ from its source fails the
suite: after changing a notebook, run `build` and commit both.

What a cell must show is declared by its code, and checked mechanically:
  - a cell that calls `plt.show()` draws: it must output at least one image per call, and a cell
    that outputs an image must call `plt.show()`;
  - a cell that calls `Audio(` plays: it must output at least one audio player per call, and a cell
    that outputs a player must call `Audio(`.
An exercise's answer sits in a folded `<details>` block of a markdown cell; its ```python blocks
are run after the notebook's last cell by the test (`execute(..., with_answers=True)`).
Figures appear as outputs only with an inline backend: the kernel is started with `MPLBACKEND`
unset, so ipykernel selects matplotlib-inline (a notebook must not force a backend itself).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO / "notebooks"
RENDERED_DIR = REPO / "docs" / "course"
HTML_DIR = REPO / "docs" / "_build" / "course"
TIMEOUT_S = 600  # per cell
# A rendered notebook above this is a sign of an oversized figure or a long embedded clip.
MAX_RENDERED_BYTES = 1_000_000

_DRAW = re.compile(r"\bplt\.show\(\)")
_PLAY = re.compile(r"\bAudio\(")
_DETAILS = re.compile(r"<details>(.*?)</details>", re.S)
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the kernel colours its tracebacks
_IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")


class NotebookError(Exception):
    """A notebook failed to run, or does not show what it declares."""


def sources() -> list[pathlib.Path]:
    return sorted(SOURCE_DIR.glob("*.ipynb"))


def rendered_path(source: pathlib.Path) -> pathlib.Path:
    return RENDERED_DIR / source.name


def _code(cell) -> str:
    """The cell's source without comment lines (a commented-out call declares nothing)."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("#"))


def _count_outputs(cell) -> tuple[int, int]:
    """(images, audio players) among a code cell's outputs."""
    images = players = 0
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        images += any(t in data for t in _IMAGE_TYPES)
        players += "<audio" in data.get("text/html", "")
    return images, players


def display_problems(nb) -> list[str]:
    """Cells whose outputs do not match what their code declares (see the module docstring)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code = _code(cell)
        first = (cell.source.strip().splitlines() or [""])[0]
        where = f"cell {i} ({first[:60]!r})"
        images, players = _count_outputs(cell)
        for name, calls, got, call in [
            ("image", len(_DRAW.findall(code)), images, "plt.show()"),
            ("audio player", len(_PLAY.findall(code)), players, "Audio("),
        ]:
            if got < calls:
                problems.append(f"{where}: calls {call} {calls}x but output {got} {name}(s)")
            if got and not calls:
                problems.append(f"{where}: outputs {got} {name}(s) without calling {call}")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"{where}: raised {out.get('ename')}: {out.get('evalue')}")
    return problems


def answer_snippets(nb) -> list[str]:
    """The ```python blocks inside folded answers (`<details>`) of the markdown cells."""
    return [
        block
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for details in _DETAILS.findall(cell.source)
        for block in _PYTHON_BLOCK.findall(details)
    ]


def execute(path: pathlib.Path, with_answers: bool = False):
    """Runs a notebook top to bottom in notebooks/ and returns it with its outputs.

    Args:
      path: the notebook.
      with_answers: append the exercises' answer snippets as code cells, so they run (in the
        notebook's own state, after its last cell) and cannot rot.

    Raises:
      NotebookError: a cell failed (with its source and traceback) or timed out.
    """
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    if with_answers:
        nb.cells += [nbformat.v4.new_code_cell(code) for code in answer_snippets(nb)]
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(SOURCE_DIR)}},
        record_timing=False,  # no timestamps in the rendered copies
        store_widget_state=False,
    )
    # The kernel inherits this environment; with MPLBACKEND set (Agg on CI machines), figures
    # would never become outputs.
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        # The exception text holds the failing cell's source and its traceback.
        raise NotebookError(f"{path.name} failed:\n{_ANSI.sub('', str(e))}") from e
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
    return nb


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def sync_problems(source: pathlib.Path) -> list[str]:
    """Why the rendered copy of `source` is not an up-to-date, complete execution of it."""
    import nbformat

    target = rendered_path(source)
    rel = target.relative_to(REPO)
    if not target.exists():
        return [f"{rel} is missing: run `python scripts/course.py build {source.stem}`"]
    rendered = nbformat.read(target, as_version=4)
    problems = []
    if _cells(rendered) != _cells(nbformat.read(source, as_version=4)):
        problems.append(
            f"{rel}: its cells differ from {source.relative_to(REPO)} "
            f"(run `python scripts/course.py build {source.stem}`)"
        )
    counts = [c.execution_count for c in rendered.cells if c.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        problems.append(f"{rel}: not executed top to bottom in one run (counts {counts})")
    problems += [f"{rel}: {p}" for p in display_problems(rendered)]
    size = target.stat().st_size
    if size > MAX_RENDERED_BYTES:
        problems.append(f"{rel}: {size:,} bytes, over the {MAX_RENDERED_BYTES:,} budget")
    return problems


def orphans() -> list[pathlib.Path]:
    """Rendered copies whose source notebook is gone."""
    names = {p.name for p in sources()}
    return [p for p in sorted(RENDERED_DIR.glob("*.ipynb")) if p.name not in names]


def compact_images(nb) -> None:
    """Re-encodes every PNG output as a 256-colour palette PNG when that is smaller.

    Figures of noise (spectrograms of random-weight audio) compress badly as full-colour PNGs; a
    palette keeps every plot readable at about 40% of the bytes, which matters for files committed
    again at every rebuild.
    """
    import base64
    import io

    from PIL import Image

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            raw = base64.b64decode(data["image/png"])
            image = Image.open(io.BytesIO(raw)).convert("RGB")
            buf = io.BytesIO()
            palette = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            palette.save(buf, "PNG", optimize=True)
            if buf.tell() < len(raw):
                data["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")


def _write_html(rendered: list[pathlib.Path]) -> None:
    import nbconvert
    import nbformat

    HTML_DIR.mkdir(parents=True, exist_ok=True)
    exporter = nbconvert.HTMLExporter()
    for path in rendered:
        body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
        (HTML_DIR / f"{path.stem}.html").write_text(body, encoding="utf-8")
    links = "\n".join(
        f'<li><a href="{p.stem}.html">{p.stem}</a></li>'
        for p in sorted(RENDERED_DIR.glob("*.ipynb"))
    )
    (HTML_DIR / "index.html").write_text(
        f"<!doctype html><title>audiogen-jax course</title><h1>audiogen-jax course</h1>"
        f"<ul>{links}</ul>\n",
        encoding="utf-8",
    )
    print(f"HTML -> {HTML_DIR.relative_to(REPO)}/index.html")


def build(names: list[str], html: bool) -> int:
    import nbformat

    chosen = [p for p in sources() if not names or p.stem in names or p.name in names]
    unknown = set(names) - {p.stem for p in chosen} - {p.name for p in chosen}
    if unknown:
        print(f"error: no notebook named {sorted(unknown)} in notebooks/", file=sys.stderr)
        return 2
    RENDERED_DIR.mkdir(parents=True, exist_ok=True)
    failed = 0
    for i, source in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {source.name} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            nb = execute(source)
            problems = display_problems(nb)
            if problems:
                raise NotebookError("\n".join(problems))
        except NotebookError as e:
            print(f"FAILED\n{e}", file=sys.stderr)
            failed += 1
            continue
        nb.metadata.pop("widgets", None)
        compact_images(nb)
        target = rendered_path(source)
        tmp = target.with_suffix(".partial")
        nbformat.write(nb, tmp)
        os.replace(tmp, target)
        print(f"{time.perf_counter() - start:.0f} s, {target.stat().st_size / 1e3:.0f} kB")
    for path in orphans():
        path.unlink()
        print(f"removed {path.relative_to(REPO)} (its source is gone)")
    if html and not failed:
        _write_html([rendered_path(p) for p in chosen])
    return 1 if failed else 0


def check() -> int:
    problems = [p for source in sources() for p in sync_problems(source)]
    problems += [f"{p.relative_to(REPO)}: no source in notebooks/" for p in orphans()]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(sources())} rendered notebooks in sync")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute the course notebooks into docs/course/, or check those copies.",
        epilog="examples:\n  python scripts/course.py build\n  python scripts/course.py build "
        "00_overview --html\n  python scripts/course.py check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute notebooks and write their rendered copies")
    b.add_argument("names", nargs="*", help="notebook names (default: all)")
    b.add_argument("--html", action="store_true", help=f"also write HTML into {HTML_DIR}")
    sub.add_parser("check", help="check that every rendered copy matches its source")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args.names, args.html)
    return check()


if __name__ == "__main__":
    raise SystemExit(main())
