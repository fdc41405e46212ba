"""Fixtures of the flow tests; the throwaway DVC project and Prefect's test settings live in
flow_fixtures.py (imported first: Prefect reads its settings when first imported)."""
from __future__ import annotations

from pathlib import Path

import pytest

from flow_fixtures import _stage_runs, make_dvc_project


@pytest.fixture
def stage_runs():
    """``stage_runs(root)``: the stages DVC actually ran in ``root``, in order."""
    return _stage_runs


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    return make_dvc_project(tmp_path / "project")
