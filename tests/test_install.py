"""Without the ``train`` extra: the core imports, and mae-pretrain says what to install in one line (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HINT = "pip install 'mae-pytorch[train]'"
TRAIN_EXTRA_MODULES = ("matplotlib", "skimage", "tqdm", "torchvision", "PIL")


def _without(tmp_path: Path, modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """Run ``args`` in a fresh interpreter where importing each of ``modules`` fails, as if it were not installed."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name in modules:
        message = f"No module named {name!r}"
        (fakes / f"{name}.py").write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fakes), str(ROOT)])}
    return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _commands() -> list:
    commands = [pytest.param([sys.executable, "-m", "mae.train", "--help"], id="python -m mae.train")]
    script = Path(sys.executable).with_name("mae-pretrain")  # the console script of the installed package
    if script.exists():
        commands.append(pytest.param([str(script), "--help"], id="mae-pretrain"))
    return commands


@pytest.mark.parametrize("command", _commands())
def test_pretrain_without_train_extra_prints_one_line_naming_the_extra(tmp_path, command):
    out = _without(tmp_path, TRAIN_EXTRA_MODULES, *command)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert HINT in lines[0] and "matplotlib" in lines[0] and "scikit-image" in lines[0]


def test_one_missing_package_is_named(tmp_path):
    out = _without(tmp_path, ("skimage",), sys.executable, "-m", "mae.train", "--epochs", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (
        f"mae-pretrain: error: this command needs the train extra (scikit-image could not be imported): {HINT}"
    )
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_python_api_without_train_extra_imports_and_pretrain_says_what_to_install(tmp_path):
    code = (
        "import mae, mae.train, mae.visualize\n"
        "from mae.train import TrainConfig, pretrain\n"
        "try:\n"
        "    pretrain(TrainConfig(epochs=1))\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = _without(tmp_path, TRAIN_EXTRA_MODULES, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mae.train.pretrain needs the train extra") and HINT in out.stdout
