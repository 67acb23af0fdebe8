from __future__ import annotations

from pathlib import Path

import pytest
from qbench.testing import CLI_CODE

REPO = Path(__file__).resolve().parents[1]


QBENCH = CLI_CODE


@pytest.fixture
def repo() -> Path:
    return REPO
