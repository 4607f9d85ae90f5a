"""The README's Python examples run as written."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_example_runs(index):
    code = _blocks()[index]
    if "import timm" in code:
        pytest.importorskip("timm", reason="timm (the [models] extra) is not installed")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
