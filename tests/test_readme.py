"""The documentation runs as written: every ```python block of README.md and docs/*.md in a scratch folder; every flag
and pip extra its commands name exists; every relative link resolves; every promise names an existing test."""

from __future__ import annotations

import argparse
import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import mae
from mae.eval.cli import build_parser as build_eval_parser
from mae.io.hf import save_hf
from mae.train.cli import build_parser as build_pretrain_parser
from mae.train.data.make_shards import build_parser as build_shards_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]  # the pages whose code blocks run
COMMAND_PAGES = [*PAGES, ROOT / "benchmarks" / "README.md"]  # the pages whose commands are checked
FLAG = r"(?<!\S)--[a-z][a-z0-9-]*"

# A command line names one of our programs: the console script, or the module torchrun starts.
PROGRAM = re.compile(r"(?<![\w.-])(mae-(?:pretrain|make-shards|knn|linprobe|finetune)|-m mae\.train"
                     r"|-m mae\.eval\.cli (?:knn|linprobe|finetune)|(?:\S*/)?python3? \S*benchmarks/\w+\.py)"
                     r"(?![\w.-])(.*)")


def _program_name(match: str) -> str:
    """'mae-knn' for 'mae-knn' and '-m mae.eval.cli knn'; 'benchmarks/x.py' for 'python .../benchmarks/x.py'."""
    if match == "-m mae.train":
        return "mae-pretrain"
    if match.startswith("-m mae.eval.cli "):
        return "mae-" + match.split()[-1]
    if match.endswith(".py"):
        return "benchmarks/" + match.rsplit("/", 1)[1]
    return match


def _parser(name: str) -> argparse.ArgumentParser:
    if name == "mae-pretrain":
        return build_pretrain_parser()
    if name == "mae-make-shards":
        return build_shards_parser()
    return build_eval_parser(name.removeprefix("mae-"))


@functools.cache
def _help_flags(name: str) -> frozenset[str]:
    """The flags ``name --help`` prints: our commands from their parsers, a benchmark script from its own --help."""
    if name.startswith("benchmarks/"):
        text = subprocess.run([sys.executable, str(ROOT / name), "--help"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=True).stdout
    else:
        text = _parser(name).format_help()
    return frozenset(re.findall(FLAG, text))


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of ``language`` in ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def _prepare_weight_files(folder: Path) -> None:
    """The files the weights page says the reader already has, in the layouts it names (official
    ``{'model': state_dict}`` full and encoder-only, a Hugging Face directory). They hold ViT-Tiny shapes to stay
    small: the real ones are 0.3-2.5 GB and nothing is downloaded in tests."""
    state = mae.create_model("mae_vit_tiny_patch16").state_dict()
    torch.save({"model": state}, folder / "mae_visualize_vit_large.pth")
    encoder = {k: v for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token")}
    torch.save({"model": encoder}, folder / "mae_pretrain_vit_base.pth")
    save_hf(mae.create_model("mae_vit_tiny_patch16"), folder / "path" / "to" / "vit-mae-base")


# Files a page's blocks must leave behind: proof that they did what the page says.
MADE = {
    "pretraining.md": ("runs/demo/checkpoints/last/model.safetensors", "runs/demo/reconstructions.png",
                       "runs/demo/loss.png"),
    "evaluation.md": ("my_encoder/config.json", "my_encoder/model.safetensors"),
    "weights.md": ("my_mae/config.json", "my_mae/model.safetensors"),
}


def _check_quickstart(spaces: list[dict]) -> None:
    quickstart = next(ns for ns in spaces if "features" in ns)
    assert tuple(quickstart["pred"].shape) == (8, 196, 16 * 16 * 3)
    assert tuple(quickstart["mask"].shape) == (8, 196) and int(quickstart["mask"][0].sum()) == 196 - 49
    assert tuple(quickstart["latent"].shape) == (8, 1 + 49, 768)
    assert tuple(quickstart["features"].shape) == (8, 1 + 196, 768)
    assert quickstart["model"].config.in_chans == 4 and quickstart["model"].config.img_size == (64, 96)


def test_the_pages_that_promise_code_have_it():
    assert _blocks(README, "python"), "README.md lost its quickstart"
    for name in MADE:
        assert _blocks(DOCS / name, "python"), f"docs/{name} has no python block"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_every_python_block_runs_as_written(page, tmp_path, monkeypatch):
    """A page's blocks in order, each in a fresh namespace, in one scratch folder of its own (nothing carried over
    but files, as for a reader going down the page)."""
    monkeypatch.chdir(tmp_path)
    _prepare_weight_files(tmp_path)
    spaces = []
    for line, code in _blocks(page, "python"):
        ns: dict = {"__name__": "__docs__"}
        exec(compile(code, f"{page}:{line}", "exec"), ns)  # the page's own code, nothing else
        spaces.append(ns)
    if page == README:
        _check_quickstart(spaces)
    for made in MADE.get(page.name, ()):
        assert (tmp_path / made).is_file(), made


def _commands(text: str) -> list[str]:
    """Every command of a bash block: continuation lines joined, comments dropped, split at && and newlines."""
    text = re.sub(r"(?m)(^|\s)#.*$", "", text.replace("\\\n", " "))
    return [c.strip() for c in re.split(r"&&|\n", text) if c.strip()]


def test_bash_blocks_use_existing_flags_and_extras():
    """Each command's flags are in the --help of the program it runs (mae-pretrain, mae-make-shards, mae-knn,
    mae-linprobe, mae-finetune, a benchmark script), and every extra it installs is in pyproject.toml."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    given: dict[str, list[tuple[Path, set[str]]]] = {}
    named: set[str] = set()
    for page in COMMAND_PAGES:
        for _, block in _blocks(page, "bash"):
            for command in _commands(block):
                named.update(e for group in re.findall(r"\.\[([a-z,]+)\]", command) for e in group.split(","))
                if (m := PROGRAM.search(command)) is not None:
                    flags = set(re.findall(FLAG, m.group(2)))
                    given.setdefault(_program_name(m.group(1)), []).append((page, flags))
    for program in ("mae-pretrain", "mae-make-shards", "mae-knn", "mae-linprobe", "mae-finetune"):
        assert program in given, f"no page shows a {program} command"
    assert len(given["mae-pretrain"]) >= 3  # the two commands, the paper's recipe, shards under torchrun
    for program, uses in given.items():
        for page, flags in uses:
            unknown = sorted(flags - _help_flags(program))
            assert not unknown, f"{page.relative_to(ROOT)}: {program} has no {unknown}"
    assert named and named <= extras, f"the pages install extras pyproject lacks: {sorted(named - extras)}"


def test_pretraining_page_names_only_existing_flags():
    """Flags quoted in the prose of docs/pretraining.md (e.g. `--resume runs/default --epochs 4`) exist: those of a
    quote that starts with one of our programs or `python benchmarks/x.py` in that program, the others in
    mae-pretrain."""
    quoted: dict[str, set[str]] = {}
    for span in re.findall(r"`([^`\n]*)`", _without_code((DOCS / "pretraining.md").read_text(encoding="utf-8"))):
        m = PROGRAM.match(span)
        program = "mae-pretrain" if m is None else _program_name(m.group(1))
        quoted.setdefault(program, set()).update(re.findall(FLAG, span))
    assert quoted["mae-pretrain"] and quoted["mae-make-shards"]
    for program, flags in quoted.items():
        unknown = sorted(flags - _help_flags(program))
        assert not unknown, f"{program} has no {unknown}"


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``: lower case, punctuation dropped, spaces to hyphens,
    -1, -2, ... on repeats."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", _without_code(page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = counts[slug] = counts.get(slug, -1) + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_relative_links_resolve():
    """Every relative link (and image) of README.md, docs/*.md and benchmarks/README.md points to an existing file,
    and to an existing heading when it names one."""
    checked = 0
    for page in COMMAND_PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor and file.suffix == ".md":
                assert anchor in _anchors(file), f"{page.relative_to(ROOT)} links to {target}: no such heading"
            checked += 1
    assert checked >= 20


def test_every_promise_names_an_existing_test():
    """docs/guarantees.md pins each promise to a test: every test it names must exist."""
    text = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    for heading in ("# What we promise", "**Never lost**", "**Refused", "**Skipped"):
        assert heading in text
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 20
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name in defined, f"docs/guarantees.md promises {path}::{name}, which does not exist"
    for bullet in re.split(r"\n- ", text)[1:]:  # every promise names at least one test
        assert "::test_" in bullet, bullet
