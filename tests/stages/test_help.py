"""Every stage's --help and `selfilter --help`: each flag explained, one example each."""
import argparse
import importlib
from pathlib import Path

import pytest

from selfilter import cli

STAGES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "stages").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", STAGES)
def test_stage_help_explains_every_flag_and_shows_the_dvc_command(name, capsys, monkeypatch):
    monkeypatch.setattr("selfilter.console.setup", lambda *a, **k: None)
    module = importlib.import_module(f"stages.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m stages.{name} ")
    example = out.split("Example (as dvc.yaml runs it):\n", 1)[1]
    assert example.lstrip().startswith(f"python -m stages.{name} ")
    assert f"dvc repro {name}" in out


def test_no_stage_flag_is_left_without_help(monkeypatch):
    seen = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr("selfilter.console.setup", lambda *a, **k: None)
    for name in STAGES:
        with pytest.raises(SystemExit):
            importlib.import_module(f"stages.{name}").main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    blank = [(p.prog, a.option_strings) for p in seen for a in p._actions if a.help in (None, "")]
    assert not blank
    assert len(seen) == len(STAGES)


def test_selfilter_help_has_an_example_per_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert cli.EXAMPLES[name].startswith(f"selfilter {name}") and cli.EXAMPLES[name] in out
    assert "dvc exp run -S select.k_nearest=5" in out and "make run" in out
