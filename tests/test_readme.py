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
    if "gpstoken" in code:
        pytest.importorskip("torchvision", reason="torchvision (the [gpstoken] extra) is not installed")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})


def test_help_of_nn_lists_every_module():
    import pydoc

    import imtok_cuda as ic

    text = pydoc.plain(pydoc.render_doc(ic.nn))
    assert ic.nn.__all__, "imtok_cuda.nn has no __all__"
    missing = [name for name in ic.nn.__all__ if f"class {name}" not in text and f"{name}(" not in text]
    assert not missing, f"help(imtok_cuda.nn) does not show {missing}"
