"""params.yaml -> one validated, typed config object per section.

Each section's schema lives next to the code that uses it (e.g. ``selfilter.selection.config``)
and subclasses :class:`Section`. Stages call :func:`load_section` once and pass plain values on;
library classes never take a config object (torchtune's builder habit).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """Base for a params.yaml section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ConfigError(ValueError):
    """A params file or section is missing or invalid; the message names the file and key."""


S = TypeVar("S", bound=Section)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false are booleans. DVC reads and
    rewrites params.yaml as YAML 1.2 (``dvc exp run -S`` writes ``mixed_precision: no`` without
    quotes); YAML 1.1 would read that ``no`` - or yes/on/off/y/n - as a boolean."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def parse_yaml(text: str) -> Any:
    """Parse params YAML the way DVC does (YAML 1.2 booleans); every params reader uses this."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_section(data: dict[str, Any], name: str, schema: type[S], source: str = "params") -> S:
    """Validate ``data[name]`` against ``schema``; errors name ``source`` and the dotted key."""
    raw = data.get(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping")
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        # One line (stages print it as their one error line); each fault names its dotted key.
        faults = []
        for err in e.errors():
            key = ".".join([name, *map(str, err["loc"])])
            faults.append(f"{key}: {err['msg']}")
        raise ConfigError(f"{source}: invalid params: " + "; ".join(faults)) from None


def load_section(name: str, schema: type[S], path: str | Path = DEFAULT_PARAMS) -> S:
    """Load and validate one section of a params file."""
    return parse_section(load_params(path), name, schema, source=str(path))
