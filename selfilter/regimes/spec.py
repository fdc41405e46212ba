"""A sweep file: the regimes, the overrides they share, and the hypothesis under test."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from selfilter.config import ConfigError, Section, parse_yaml

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Regime(Section):
    describe: str                                  # one line: what real data this stands for
    noise: str                                     # label: high | mid | low (measured share reported beside it)
    overrides: dict[str, Any] = Field(default_factory=dict)   # dotted params keys, on top of the sweep's
    # Start a new workspace as a copy of another regime's (or "." = the checkout's own outputs):
    # a regime that changes only the judge then retrains only the runs the judge feeds.
    start_from: str | None = None


class Hypothesis(Section):
    text: str
    regimes: list[str]      # where it predicts a win
    methods: list[str]      # the variants it is about (the paper's Self-Filter)
    # The control whose win over random is the hypothesis' premise (oracle_hard: hard, correct
    # samples help on this benchmark); a cell where it does not win cannot test the hypothesis.
    control: str | None = None


class SweepSpec(Section):
    profile: str | None = None                     # a profiles/ overlay under every regime
    overrides: dict[str, Any] = Field(default_factory=dict)
    reference: str = "random"
    # A (regime, budget) cell where none of these beats the reference is blind. One string is
    # accepted too (sweep files written before oracle_hard existed).
    controls: list[str] = Field(default_factory=lambda: ["oracle_clean"])
    hypothesis: Hypothesis
    regimes: dict[str, Regime]

    @model_validator(mode="before")
    @classmethod
    def _old_control_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "control" in data:
            data = dict(data)
            old = data.pop("control")
            if "controls" in data:
                raise ValueError("give 'controls' (a list), not both 'control' and 'controls'")
            data["controls"] = [old] if isinstance(old, str) else old
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        names = list(self.regimes)
        for i, name in enumerate(names):
            if not NAME.match(name):
                raise ValueError(f"regime name {name!r}: use lower-case letters, digits, '-' and '_' (it names a folder)")
            src = self.regimes[name].start_from
            if src is not None and src != "." and src not in names[:i]:
                raise ValueError(f"regime {name!r}: start_from {src!r} is not a regime listed before it (or '.')")
        unknown = [r for r in self.hypothesis.regimes if r not in self.regimes]
        if unknown:
            raise ValueError(f"hypothesis.regimes {unknown} are not regimes of this sweep ({names})")
        if self.hypothesis.control is not None and self.hypothesis.control not in self.controls:
            raise ValueError(f"hypothesis.control {self.hypothesis.control!r} is not one of controls {self.controls}")
        methods = self.overrides.get("select.methods")
        if methods is not None:
            missing = [m for m in (self.reference, *self.controls, *self.hypothesis.methods) if m not in methods]
            if missing:
                raise ValueError(f"select.methods {methods} lacks {missing}: the map needs the reference, "
                                 "the controls and the hypothesis' methods in every regime")
        return self

    def params_overrides(self, name: str) -> dict[str, Any]:
        return {**self.overrides, **self.regimes[name].overrides}


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    data = parse_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    try:
        return SweepSpec(**data)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
