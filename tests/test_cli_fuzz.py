"""Every numeric or choice flag of every command refuses bad values the same way: exit code 2, no traceback, a message
naming the flag, and nothing written. Flags and their types are read from the parsers, so a new flag is covered."""

from __future__ import annotations

import argparse
import io
import sys

import pytest

from mae.eval.cli import build_parser as eval_parser
from mae.eval.cli import main as eval_main
from mae.runtime.cli import run_command
from mae.train.cli import build_parser as pretrain_parser
from mae.train.cli import main as pretrain_main
from mae.train.data.make_shards import build_parser as shards_parser
from mae.train.data.make_shards import main as shards_main

BAD = {int: ["abc", "1.5", "-3", "nan"], float: ["nan", "inf", "-inf", "abc"]}
COMMANDS = {
    "mae-pretrain": (pretrain_parser, pretrain_main),
    **{f"mae-{p}": (lambda p=p: eval_parser(p), lambda argv, p=p: eval_main(p, argv))
       for p in ("knn", "linprobe", "finetune")},
}


def _cases():
    for command, (parser, _) in COMMANDS.items():
        for action in parser()._actions:
            flag = next((o for o in action.option_strings if o.startswith("--")), None)
            if flag in (None, "--help", "--resume") or isinstance(action, argparse.BooleanOptionalAction):
                continue
            if action.choices is not None:
                yield pytest.param(command, flag, "bogus", id=f"{command} {flag} bogus")
            elif action.type in BAD:
                for value in BAD[action.type]:
                    yield pytest.param(command, flag, value, id=f"{command} {flag} {value}")


@pytest.mark.parametrize("command, flag, value", list(_cases()))
def test_a_bad_flag_value_is_refused_in_one_message_naming_it(command, flag, value, tmp_path, capsys):
    _, main = COMMANDS[command]
    try:
        code = main([flag, value, "--output-dir", str(tmp_path / "runs")])
    except SystemExit as exit_:  # argparse's own refusal: usage and one error line
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    names = {flag, flag[2:].replace("-", "_"), flag[2:]}
    assert any(name in err for name in names), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


@pytest.mark.parametrize("args, says", [
    (["--shard-size", "0"], "shard"), (["--shard-size", "abc"], "--shard-size"), (["--seed", "-1"], "seed"),
    (["--max-side", "8"], "--max-side"), (["--max-side", "nan"], "--max-side"),
])
def test_mae_make_shards_refuses_bad_values(tmp_path, capsys, args, says):
    (tmp_path / "src").mkdir()
    try:
        code = shards_main([str(tmp_path / "src"), str(tmp_path / "out"), *args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and says in err, err
    assert not (tmp_path / "out").exists()


def test_every_command_is_covered():
    commands = {f"{c} {f}" for c, f, _ in (p.values for p in _cases())}
    assert {c.split()[0] for c in commands} == set(COMMANDS)
    assert len(commands) > 60 and shards_parser().prog == "mae-make-shards"


def test_a_failing_command_writes_its_line_in_one_write(monkeypatch):
    """All processes of a multi-process run print the same error at once: with the newline written separately
    (print()), their lines ran into each other ("...raise --repeatmae-pretrain: error: ...")."""

    class Recording(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return super().write(text)

    err = Recording()
    monkeypatch.setattr(sys, "stderr", err)

    def body():
        raise ValueError("no full batch")

    assert run_command("mae-pretrain", body, lambda: "") == 2
    assert err.writes == ["mae-pretrain: error: no full batch\n"]
