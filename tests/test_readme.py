"""The README's Python examples run as written, each on its own in a fresh process."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_alone(index, tmp_path):
    code = "import matplotlib\nmatplotlib.use('Agg')\n" + BLOCKS[index]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, f"README block {index + 1} failed on its own:\n{BLOCKS[index]}\n{out.stderr[-3000:]}"
