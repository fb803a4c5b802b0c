"""Shared test fixtures: the PyTorch reference (audiocraft), made to fail, never skip, in CI; and a
collection-time check that every test needing the reference says so (`@pytest.mark.parity`)."""

from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap

import pytest

# The reference and JAX both use the 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# audiocraft's audio_write shells out to `ffmpeg`, which the setup script links into .venv/bin.
_bin = os.path.dirname(sys.executable)
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")

# Spellings of "no" for the CI variable; any other non-empty value means CI (runners set "true",
# "1", "yes", ...). An unrecognised value errs towards CI: a parity test then fails, never skips.
_NOT_CI = frozenset({"", "0", "false", "no", "off"})


def ci_mode(value: str | None) -> bool:
    """Whether the value of the `CI` environment variable turns CI mode on."""
    return value is not None and value.strip().lower() not in _NOT_CI


IN_CI = ci_mode(os.environ.get("CI"))


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
    """A directory holding a small T5-layout `spiece.model` (8000 pieces, 8100 ids with T5's extra
    ids)."""
    from spm_util import make_spiece_dir

    return make_spiece_dir(tmp_path_factory.mktemp("spiece"))


# --------------------------------------------------------------------------------------------------
# The parity marker's coverage. A test needs the reference when it uses the `reference` fixture
# (directly or through another fixture) or when its code, its fixtures' code, or a helper they call
# that is defined under tests/ imports one of these packages. Such a test must both use the fixture
# (so a missing reference fails in CI and skips elsewhere, instead of erroring) and carry
# `@pytest.mark.parity`; a test with the marker must use the fixture.

REFERENCE_PACKAGES = frozenset({"audiocraft", "torch", "torchaudio", "julius"})
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _defined_in_tests(obj) -> bool:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return path is not None and os.path.abspath(path).startswith(_TESTS_DIR + os.sep)


def reference_import(obj, seen: set[int] | None = None) -> str | None:
    """The first reference package that `obj` (a function or class defined under tests/) imports,
    itself or through the tests/ helpers it names; None if there is none.

    Static: reads the source (imports anywhere in the body, names resolved in the function's
    globals, attributes of tests/ helper modules it imports), so a branch that never runs counts.
    """
    seen = set() if seen is None else seen
    obj = inspect.unwrap(getattr(obj, "__func__", obj))
    if id(obj) in seen or not _defined_in_tests(obj):
        return None
    seen.add(id(obj))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return None
    namespace = dict(getattr(obj, "__globals__", None) or vars(sys.modules[obj.__module__]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in REFERENCE_PACKAGES:
                return name.split(".")[0]
            module = sys.modules.get(name)
            if module is not None and _defined_in_tests(module):
                namespace.setdefault(name, module)
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        if hasattr(module, alias.name):
                            namespace[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Name):
            target = namespace.get(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = namespace.get(node.value.id)
            if inspect.ismodule(module):
                target = getattr(module, node.attr, None)
        if inspect.isclass(target):
            candidates = [target, *vars(target).values()]
        else:
            candidates = [target]
        for candidate in candidates:
            if inspect.isfunction(getattr(candidate, "__func__", candidate)) or inspect.isclass(
                candidate
            ):
                if candidate is not obj:
                    found = reference_import(candidate, seen)
                    if found:
                        return found
    return None


def parity_marker_problem(item) -> str | None:
    """Why `item` breaks the parity-marker rule, or None."""
    uses_fixture = "reference" in getattr(item, "fixturenames", ())
    marked = item.get_closest_marker("parity") is not None
    imported = None
    function = getattr(item, "function", None)
    if function is not None:
        seen: set[int] = set()
        fixturedefs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        sources = [function] + [d.func for defs in fixturedefs.values() for d in defs]
        for source in sources:
            imported = reference_import(source, seen)
            if imported:
                break
    if imported and not uses_fixture:
        return (
            f"imports {imported} without the `reference` fixture: take it as an argument (a "
            "missing reference then fails in CI and skips elsewhere) and mark the test "
            "@pytest.mark.parity"
        )
    if uses_fixture and not marked:
        return "uses the reference but lacks @pytest.mark.parity"
    if marked and not uses_fixture:
        return "is marked parity but does not use the `reference` fixture"
    return None


_PROBLEM = pytest.StashKey[str]()


def pytest_collection_modifyitems(config, items):
    for item in items:
        problem = parity_marker_problem(item)
        if problem:
            item.stash[_PROBLEM] = problem


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    problem = item.stash.get(_PROBLEM, None)
    if problem:
        pytest.fail(f"{item.nodeid} {problem}", pytrace=False)
