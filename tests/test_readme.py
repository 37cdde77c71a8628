"""The README's Python examples run as written."""

import pathlib
import re

import pyro

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    pyro.clear_param_store()
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    flow, data = namespace["flow"], namespace["data"]
    assert flow.dim == 2 and data.shape == (2000, 2)
