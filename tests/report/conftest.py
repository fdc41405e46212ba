"""Report fixtures."""
import pytest
from synthetic_grid import build_grid


@pytest.fixture
def grid(tmp_path):
    return build_grid(tmp_path)
