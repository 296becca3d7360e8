"""The README's Python examples run, and it documents every flag of python -m pipeline.train."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def example_blocks(text: str) -> list[str]:
    """Return the code of the README's ```python example blocks (plain ```python blocks are illustrations)."""
    return re.findall(r"^```python example\n(.*?)^```$", text, flags=re.S | re.M)


RUNS = {  # how a user runs the examples: a script (no __main__ guard), python -c, piped to stdin, a notebook
    "script": lambda code, d: [sys.executable, str(_write(d / "examples.py", code))],
    "python -c": lambda code, d: [sys.executable, "-c", code],
    "stdin": lambda code, d: [sys.executable, "-"],
    # a notebook kernel runs each cell in an IPython shell whose __main__ has no file
    "notebook": lambda code, d: [sys.executable, "-c", "import sys; from IPython.core.interactiveshell import "
                                 "InteractiveShell; sh = InteractiveShell.instance(); "
                                 "cells = open(sys.argv[1]).read().split('\\n# --- cell ---\\n'); "
                                 "sys.exit(any(not sh.run_cell(c).success for c in cells))",
                                 str(_write(d / "cells.txt", code))],
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("how", list(RUNS))
def test_python_examples_run(tmp_path, how):
    blocks = example_blocks(README)
    assert len(blocks) >= 3, "the Python API section lost its examples"
    code = "\n# --- cell ---\n".join(blocks)  # in order: later blocks use earlier names
    r = subprocess.run(RUNS[how](code, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       input=code if how == "stdin" else None,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test accuracy 0." in r.stdout and "held-out R² 0.9" in r.stdout
    assert (tmp_path / "run.zarr").is_dir() and (tmp_path / "run-data.zarr").is_dir()
    assert (tmp_path / "run-report" / "accuracy.png").stat().st_size > 0


def train_flags() -> set[str]:
    """Return every long flag that ``python -m pipeline.train --help`` prints."""
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", r.stdout)) - {"--help"}


def test_every_train_flag_is_documented():
    """Each flag of --help is named in the README (flag table, sections or examples), and no stale flags are."""
    flags = train_flags()
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", README))
    assert not missing, f"flags of python -m pipeline.train --help missing from README.md: {missing}"
    table = README.split("`python -m pipeline.train --help` lists every flag", 1)[1].split("\n\n", 2)[1]
    in_table = set(re.findall(r"`(--[a-z][a-z-]*)", table))
    assert in_table and in_table <= flags, f"README flag table names unknown flags: {sorted(in_table - flags)}"
