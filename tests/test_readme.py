"""The README's quickstart code runs as written and its shape comments are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_quickstart_runs_and_its_shapes_hold():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    quickstart = next(b for b in blocks if "create_model(\"mae_vit_base_patch16\"" in b)
    ns: dict = {}
    exec(compile(quickstart, str(README), "exec"), ns)  # the README's own code, nothing else
    assert tuple(ns["pred"].shape) == (8, 196, 16 * 16 * 3)
    assert tuple(ns["mask"].shape) == (8, 196) and int(ns["mask"][0].sum()) == 196 - 49
    assert tuple(ns["latent"].shape) == (8, 1 + 49, 768)
    assert tuple(ns["features"].shape) == (8, 1 + 196, 768)
    assert ns["model"].config.in_chans == 4 and ns["model"].config.img_size == (64, 96)
