"""README.md runs as written: every ```python block in a scratch folder, and every mae-pretrain flag and pip extra
its commands name exists."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import mae
from mae.io.hf import save_hf
from mae.train.cli import build_parser
from mae.train.data.make_shards import build_parser as build_shards_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def _prepare_weight_files(folder: Path) -> None:
    """The files the "Pretrained weights" block says the reader already has, in the layouts it names (official
    ``{'model': state_dict}`` full and encoder-only, a Hugging Face directory). They hold ViT-Tiny shapes to stay
    small: the real ones are 0.3-2.5 GB and nothing is downloaded in tests."""
    state = mae.create_model("mae_vit_tiny_patch16").state_dict()
    torch.save({"model": state}, folder / "mae_visualize_vit_large.pth")
    encoder = {k: v for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token")}
    torch.save({"model": encoder}, folder / "mae_pretrain_vit_base.pth")
    save_hf(mae.create_model("mae_vit_tiny_patch16"), folder / "path" / "to" / "vit-mae-base")


@pytest.mark.slow
def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    """Each block in a fresh namespace (nothing carried over but files, as for a reader going down the page)."""
    monkeypatch.chdir(tmp_path)
    _prepare_weight_files(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 4
    spaces = []
    for line, code in blocks:
        ns: dict = {"__name__": "__readme__"}
        exec(compile(code, f"{README}:{line}", "exec"), ns)  # the README's own code, nothing else
        spaces.append(ns)
    quickstart = next(ns for ns in spaces if "features" in ns)
    assert tuple(quickstart["pred"].shape) == (8, 196, 16 * 16 * 3)
    assert tuple(quickstart["mask"].shape) == (8, 196) and int(quickstart["mask"][0].sum()) == 196 - 49
    assert tuple(quickstart["latent"].shape) == (8, 1 + 49, 768)
    assert tuple(quickstart["features"].shape) == (8, 1 + 196, 768)
    assert quickstart["model"].config.in_chans == 4 and quickstart["model"].config.img_size == (64, 96)
    for made in ("runs/demo/checkpoints/last/model.safetensors", "runs/demo/reconstructions.png", "runs/demo/loss.png",
                 "my_mae/config.json", "my_mae/model.safetensors"):
        assert (tmp_path / made).is_file(), made


def _commands(text: str) -> list[str]:
    return [c.strip() for c in re.split(r"&&|\n", text.replace("\\\n", " ")) if c.strip()]


def _pretrain_flags(command: str) -> list[str] | None:
    """The flags given to mae-pretrain in a shell command (also as ``python -m mae.train``), or None."""
    m = re.search(r"(?:mae-pretrain|-m mae\.train)\b(.*)", command)
    return None if m is None else re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", m.group(1))


def test_bash_blocks_use_existing_mae_pretrain_flags_and_extras():
    help_flags = set(re.findall(r"--[a-z][a-z0-9-]*", build_parser().format_help()))  # what --help prints
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    commands = [c for _, block in _blocks("bash") for c in _commands(block)]
    given = [flags for c in commands if (flags := _pretrain_flags(c)) is not None]
    assert len(given) >= 3  # the quickstart, the pretraining section and the torchrun example
    unknown = sorted({f for flags in given for f in flags} - help_flags)
    assert not unknown, f"README commands use mae-pretrain flags it does not have: {unknown}"
    named = {e for c in commands for group in re.findall(r"\.\[([a-z,]+)\]", c) for e in group.split(",")}
    assert named and named <= extras, f"README installs extras pyproject lacks: {sorted(named - extras)}"


def test_pretraining_section_names_only_existing_flags():
    """Flags quoted in the prose of the Pretraining section (e.g. `--resume runs/default --epochs 40`) exist: those of
    a quote that starts with `mae-make-shards` or `python benchmarks/x.py` in that command, the others in
    mae-pretrain."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Pretraining"):text.index("\n## ", text.index("## Pretraining") + 1)]
    quoted: dict[str, set[str]] = {"mae-pretrain": set(), "mae-make-shards": set()}
    for span in re.findall(r"`([^`\n]*)`", section):
        command = "mae-pretrain"
        if span.startswith(("mae-make-shards", "python benchmarks/")):
            command = " ".join(span.split()[:2]) if span.startswith("python") else "mae-make-shards"
        quoted.setdefault(command, set()).update(re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", span))
    helps = {"mae-pretrain": build_parser().format_help(), "mae-make-shards": build_shards_parser().format_help()}
    for command in quoted.keys() - helps.keys():  # the benchmark scripts: their own --help
        script = ROOT / command.split()[1]
        helps[command] = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=True).stdout
    assert quoted["mae-pretrain"] and quoted["mae-make-shards"] and len(quoted) > 2
    for command, flags in quoted.items():
        unknown = sorted(flags - set(re.findall(r"--[a-z][a-z0-9-]*", helps[command])))
        assert not unknown, f"{command} has no {unknown}"


def test_every_promise_names_an_existing_test():
    """The "What we promise" section pins each promise to a test: every test it names must exist."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## What we promise")
    section = text[start:text.index("\n## ", start + 1)]
    for heading in ("**Never lost**", "**Refused", "**Skipped"):
        assert heading in section
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 20
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name in defined, f"README promises {path}::{name}, which does not exist"
    for bullet in re.split(r"\n- ", section)[1:]:  # every promise names at least one test
        assert "::test_" in bullet, bullet
