"""The package's import rules, read from the source: backend libraries are imported in one
module only, and the library never imports the command-line/run layer (`clusterloss.app`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clusterloss"
BACKEND_LIBRARIES = {"tensorflow", "jax", "jaxlib", "torch"}
NATIVE = PACKAGE / "_native.py"


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement of `path` (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_backend_libraries_are_imported_only_in_native():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in BACKEND_LIBRARIES
        )
        for path in PACKAGE.rglob("*.py")
        if path != NATIVE
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert {"tensorflow", "jax", "torch"} <= {m.split(".")[0] for m in imported_modules(NATIVE)}


def test_library_never_imports_the_app_layer():
    app = PACKAGE / "app"
    offenders = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if app not in path.parents
        and path != PACKAGE / "__main__.py"
        and any(m == "clusterloss.app" or m.startswith("clusterloss.app.") for m in imported_modules(path))
    }
    assert offenders == set()


def _imports_of(folder: str) -> dict[str, set[str]]:
    return {
        path.stem: {m for m in imported_modules(path) if m.startswith("clusterloss.")}
        for path in (PACKAGE / folder).glob("*.py")
    }


def test_miners_and_tuples_never_import_the_losses():
    for folder in ("miners", "tuples"):
        offenders = {
            name: sorted(m for m in found if m.startswith("clusterloss.losses"))
            for name, found in _imports_of(folder).items()
        }
        assert {k: v for k, v in offenders.items() if v} == {}, folder


def test_no_loss_module_imports_another_loss_module():
    shared = {"base", "regularizers", "__init__"}  # the base class and the embedding regularizer
    imports = _imports_of("losses")
    offenders = {
        name: sorted(m for m in found if m.startswith("clusterloss.losses.") and m.rsplit(".", 1)[1] not in shared)
        for name, found in imports.items()
        if name != "__init__"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert "clusterloss.tuples.triplets" in imports["margin"]  # the check sees real imports


def test_private_keras_is_imported_in_one_pinned_place():
    # `keras.src` moves between Keras releases: the library imports it in `_native` only,
    # and the test below fails (ImportError, or a wrong answer) when Keras moves it.
    offenders = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(m.startswith("keras.src") for m in imported_modules(path))
    }
    assert offenders == {"_native.py"}


def test_the_private_stateless_scope_check_still_answers():
    import keras

    from clusterloss import _native

    assert _native._in_stateless_scope() is False
    with keras.StatelessScope():
        assert _native._in_stateless_scope() is True
