"""The suite's own guards (tests/conftest.py): CI mode, and the parity marker's coverage.

A parity test must fail, never skip, in CI; so CI mode cannot depend on the exact spelling a runner
uses, and `.ci/run` turns it on itself. The end-to-end cases run pytest in a child process on a
scratch directory holding a copy of the real conftest and a planted `audiocraft` that cannot be
imported (the reference is "missing"), so nothing here needs or touches the real reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import conftest
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYTEST_INI = """\
[pytest]
addopts = -p no:cacheprovider
markers =
    parity: compares against the PyTorch reference
"""


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, False),
        ("", False),
        ("  ", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("NO", False),
        ("off", False),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("github-actions", True),  # an unrecognised value errs towards CI
    ],
)
def test_ci_mode(value, expected):
    assert conftest.ci_mode(value) is expected


def _scratch(tmp_path, test_source: str, helpers: dict[str, str] | None = None) -> str:
    """A directory: the real conftest, one test file, helpers, and an unimportable audiocraft."""
    root = tmp_path / "suite"
    root.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), root / "conftest.py")
    (root / "pytest.ini").write_text(PYTEST_INI)
    (root / "test_scratch.py").write_text(test_source)
    for name, source in (helpers or {}).items():
        (root / name).write_text(source)
    planted = tmp_path / "planted" / "audiocraft"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise ImportError('planted: no reference here')\n")
    return str(root)


def _run_pytest(root: str, ci: str | None) -> dict[str, tuple[str, str]]:
    """Runs pytest on `root` with `CI` = `ci` (None: unset); {test name: (outcome, message)}."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.path.join(os.path.dirname(root), "planted")
    report = os.path.join(os.path.dirname(root), "report.xml")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", root],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert os.path.isfile(report), proc.stdout + proc.stderr
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("error", "error", "skipped"):
                outcome, message = child.tag, child.get("message", "")
        outcomes[case.get("name")] = (outcome, message)
    return outcomes


def _run_ci_run(tmp_path, ci: str | None) -> str:
    root = tmp_path / "clone"
    (root / ".ci").mkdir(parents=True)
    (root / "scripts").mkdir()
    shutil.copy(os.path.join(REPO, ".ci", "run"), root / ".ci" / "run")
    (root / "scripts" / "test.sh").write_text('echo "CI=${CI-unset}"\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run(
        ["bash", str(root / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_ci_run_turns_ci_mode_on(tmp_path):
    # Whatever the runner sets (nothing, or an explicit "no"), the suite runs in CI mode.
    assert _run_ci_run(tmp_path / "a", None) == "CI=true"
    assert _run_ci_run(tmp_path / "b", "false") == "CI=true"


def test_missing_reference_fails_in_ci_and_skips_elsewhere(tmp_path):
    root = _scratch(
        tmp_path,
        "import pytest\n\n\n@pytest.mark.parity\ndef test_needs_it(reference):\n    pass\n",
    )
    for ci, expected in [(None, "skipped"), ("false", "skipped"), ("1", "error")]:
        outcome, reason = _run_pytest(root, ci)["test_needs_it"]
        assert outcome == expected, (ci, outcome, reason)
        assert "planted: no reference here" in reason


CHECKED = """\
import pytest

import refhelper


@pytest.fixture
def model(reference):
    return 1


def test_fixture_without_marker(reference):
    pass


def test_fixture_through_another_fixture(model):
    pass


@pytest.mark.parity
def test_marker_without_fixture():
    pass


def test_imports_torch_itself():
    if False:
        import torch  # noqa: F401


def test_calls_a_helper_that_imports_the_reference():
    if False:
        refhelper.build()


@pytest.mark.parity
def test_marked_with_fixture_but_helper_imports(reference):
    refhelper.build


@pytest.mark.parity
def test_well_formed(reference):
    pass


def test_no_reference():
    assert refhelper.numbers() == 3
"""

HELPER = """\
def _inner():
    from audiocraft.models import lm  # noqa: F401


def build():
    return _inner()


def numbers():
    return 3
"""


def test_parity_marker_coverage_is_enforced(tmp_path):
    root = _scratch(tmp_path, CHECKED, {"refhelper.py": HELPER})
    got = _run_pytest(root, None)
    # Both checks fail at setup, before any fixture runs: junit reports those as errors.
    expected = {
        "test_fixture_without_marker": ("error", "lacks @pytest.mark.parity"),
        "test_fixture_through_another_fixture": ("error", "lacks @pytest.mark.parity"),
        "test_marker_without_fixture": ("error", "does not use the `reference` fixture"),
        "test_imports_torch_itself": ("error", "imports torch without the `reference` fixture"),
        "test_calls_a_helper_that_imports_the_reference": (
            "error",
            "imports audiocraft without the `reference` fixture",
        ),
        # Well-formed tests run as usual: here the reference is missing, so they skip (not CI).
        "test_marked_with_fixture_but_helper_imports": ("skipped", "planted"),
        "test_well_formed": ("skipped", "planted"),
        "test_no_reference": ("passed", ""),
    }
    assert set(got) == set(expected), got
    for name, (outcome, reason) in expected.items():
        assert got[name][0] == outcome and reason in got[name][1], (name, got[name])
