"""Every Python block of README.md and docs/*.md runs as written, on tiny input.

README.md's blocks also run as its own install has them (`pip install -e ".[jax]"`): in a
fresh interpreter with an empty HOME, no backend chosen, and only JAX importable.

The blocks of one file run in order in one namespace (a later block may use what an earlier
one made), which starts with tiny labelled data under the names the docs use: `x`, `y`
(200 of scikit-learn's 8x8 digits as 64-D vectors in [0, 1], labels 0-9) and `x_train`,
`y_train`, `x_test`, `y_test` (150 / 50 of them). A block that is not meant to run (a
signature, a sketch with `...`) is marked by the HTML comment `<!-- fragment -->` on the line
before its fence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """`(line, code, is_fragment)` of each ```python block."""
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        line = text.count("\n", 0, match.start()) + 1
        found.append((line, match.group(1), bool(before) and before[-1].strip() == FRAGMENT))
    return found


def tiny_inputs() -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data[:200] / 16.0).astype("float32"), digits.target[:200]
    return {"x": x, "y": y, "x_train": x[:150], "y_train": y[:150], "x_test": x[150:], "y_test": y[150:]}


def test_the_convention_is_found():
    blocks = python_blocks("<!-- fragment -->\n```python\na(\n```\n\n```python\nb = 1\n```\n")
    assert blocks == [(2, "a(\n", True), (6, "b = 1\n", False)]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_run(path, tmp_path, monkeypatch):
    import keras

    if path.name == "README.md" and keras.backend.backend() == "jax":
        pytest.skip("on JAX, test_readme_runs_in_its_own_install_on_a_fresh_home runs it")
    blocks = [b for b in python_blocks(path.read_text()) if not b[2]]
    if not blocks:
        pytest.skip(f"{path.name} has no Python block to run")
    monkeypatch.chdir(tmp_path)  # files a block writes stay here
    namespace = {"__name__": "__docs__", **tiny_inputs()}
    for line, code, _ in blocks:
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as error:  # the block's place, then the error
            raise AssertionError(
                f"{os.path.relpath(path, ROOT)}, block at line {line}: {type(error).__name__}: {error}"
            ) from error


# Runs README.md's blocks in order (argv: the tests folder, README.md), then names the backend.
FRESH_INSTALL = """
import sys
sys.path.insert(0, sys.argv[1])
from test_docs import python_blocks, tiny_inputs
namespace = {"__name__": "__docs__", **tiny_inputs()}
for line, code, fragment in python_blocks(open(sys.argv[2]).read()):
    if not fragment:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
import keras
print("backend", keras.backend.backend())
"""
NOT_IN_README_INSTALL = ("tensorflow", "torch", "faiss")  # pip install -e ".[jax]" has JAX only


def test_readme_runs_in_its_own_install_on_a_fresh_home(tmp_path):
    """No TensorFlow, PyTorch or FAISS to import (the installed packages but those, linked
    into a folder that replaces site-packages), an empty HOME, no backend chosen."""
    import keras  # here, not at the top: the fresh interpreter imports this module's helpers

    if keras.backend.backend() != "jax":
        pytest.skip("the README's install is JAX only: run once, on the JAX pass")
    site = tmp_path / "site-packages"
    site.mkdir()
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(folder).iterdir():
            if re.split(r"[-.]", entry.name)[0] not in NOT_IN_README_INSTALL and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME", "PYTHONPATH")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]))
    done = subprocess.run(
        [sys.executable, "-S", "-c", FRESH_INSTALL, str(ROOT / "tests"), str(ROOT / "README.md")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "backend jax"
