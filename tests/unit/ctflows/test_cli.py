import json

import pytest

from ctflows.cli import build_parser, main

COMMANDS = [
    "models",
    "status",
    "history",
    "rollback",
    "promote",
    "freeze",
    "unfreeze",
    "run",
    "init",
    "check",
    "land",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: ctflows {command}" in out and "--json" in out and "exit codes" in out


def test_missing_reason_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["promote", "churn", "3"])
    assert exit_.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_unknown_model_exits_2_listing_the_known_ones(tmp_path, capsys):
    from tests.helpers import write_params

    write_params(tmp_path)
    code = main(["history", "fraud", "--project", str(tmp_path), "--json"])
    assert code == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "error": "unknown model 'fraud'; known models: churn-classifier",
        "exit_code": 2,
    }
    assert "known models: churn-classifier" in captured.err


@pytest.mark.parametrize("other", ["--force", "--dry-run"])
def test_redecide_with_force_or_dry_run_is_refused(tmp_path, capsys, other):
    from tests.helpers import write_params

    write_params(tmp_path)
    code = main(["run", "churn-classifier", "--redecide", other, "--project", str(tmp_path)])
    assert code == 2 and "--redecide" in capsys.readouterr().err
