from __future__ import annotations

from pathlib import Path

import pytest
from integration_helpers import REPO


@pytest.fixture
def repo() -> Path:
    return REPO
